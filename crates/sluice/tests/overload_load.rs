//! `[service.concurrency]` under an open-loop overload, in a file of its own so that its load
//! (400 new connections a second) does not share the machine with other tests' timings.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::SocketAddr;
use std::time::Duration;

use sluice_test_support::open_loop::{self, OpenLoop, Outcome, Summary, Target};
use sluice_test_support::{Backend, Mode, SluiceProcess, free_port, metric_value};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// Under the conditions an overload is met in production: an open-loop load of 400 requests a
/// second, each on its own connection, against a service that can finish 200 a second
/// (`max_in_flight = 100`, 500 ms each), so that more than 200 requests are in flight at once.
/// The admitted ones finish within the queue bound plus the instance's time; the rest are
/// refused at once; nothing times out or fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_overload_is_shed_at_once_and_the_admitted_finish_in_bounded_time() {
    open_loop::ensure_open_files(8192);
    let backend = Backend::start("slow");
    backend.set_mode(Mode::Delay(500));
    let (admin, web) = (addr(), addr());
    let config = format!(
        "[admin]\nbind = \"{admin}\"\n[access_log]\npath = \"off\"\n\
         [[listener]]\nname = \"web\"\nbind = \"{web}\"\n\
         [[route]]\nservice = \"slow\"\n\
         [[service]]\nname = \"slow\"\ninstances = [\"{}\"]\n\
         concurrency = {{ max_in_flight = 100, max_queued = 150, queue_timeout = \"3s\" }}\n",
        backend.addr()
    );
    let sluice = SluiceProcess::start(BIN.as_ref(), &config, admin);

    let load = OpenLoop::new(Target::http_get(web, "/"), 400.0)
        .max_duration(Duration::from_secs(4))
        .start();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let records = load.finish().await;
    let summary = Summary::of(&records);

    let took = |r: &open_loop::Record| r.done.duration_since(r.scheduled);
    let (mut served, mut refused) = (Vec::new(), Vec::new());
    for r in &records {
        match &r.outcome {
            Outcome::Http { status: 200, .. } => served.push(took(r)),
            Outcome::Http {
                status: 503,
                error: Some(e),
                ..
            } if e == "overloaded" => refused.push(took(r)),
            _ => panic!("{}: {}\n{summary}", r.kind(), r.detail()),
        }
    }
    served.sort();
    refused.sort();
    let p99 = |v: &[Duration]| v[v.len() * 99 / 100];
    let (max_in_flight, _) = open_loop::max_in_flight(&records);
    eprintln!(
        "{} served (slowest {:?}), {} refused (p99 {:?}), {max_in_flight} in flight at most",
        served.len(),
        served.last(),
        refused.len(),
        p99(&refused)
    );
    assert!(
        max_in_flight >= 200,
        "{max_in_flight} in flight at most\n{summary}"
    );
    assert!(served.len() >= 500, "{} served\n{summary}", served.len());
    assert!(refused.len() >= 300, "{} refused\n{summary}", refused.len());
    // A refusal waits for nothing; an admitted request waits at most for the 150 ahead of it
    // (0.75 s at 200 a second) and then its own 500 ms.
    assert!(
        p99(&refused) < Duration::from_millis(250),
        "refusals p99 {:?}\n{summary}",
        p99(&refused)
    );
    assert!(
        *served.last().unwrap() < Duration::from_millis(2500),
        "slowest admitted {:?}\n{summary}",
        served.last()
    );
    assert_eq!(
        backend.hits() as usize,
        served.len(),
        "refused requests never reach it"
    );
    let counted = |reason: &str| {
        let line =
            format!("sluice_service_overloaded_total{{service=\"slow\",reason=\"{reason}\"}}");
        metric_value(sluice.admin, &line).unwrap_or(0.0) as usize
    };
    assert_eq!(
        counted("queue_full") + counted("queue_timeout"),
        refused.len()
    );
}
