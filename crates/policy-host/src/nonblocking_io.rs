//! `wasi:io` for policies, without a Tokio runtime.
//!
//! wasmtime-wasi's synchronous bindings run every *blocking* `wasi:io` function (a stream's
//! `blocking-write-and-flush` and `drop`, `pollable.block`, `poll`, ...) through
//! `Handle::block_on`. Policies are called on the proxy's runtime threads, where `block_on`
//! panics ("Cannot start a runtime from within a runtime"), so a guest that merely writes a panic
//! message to stderr would take the proxy's connection task down with it.
//!
//! A policy's streams never block: stdin is empty, stdout a sink, stderr a bounded in-memory
//! pipe. So these replacements poll the same operation once, with a no-op waker, and return its
//! result when it is ready — which, for those streams, it always is. An operation that would
//! really wait (a guest sleeping on a clock pollable, say) traps instead: a policy has its inputs
//! and a deadline, and waiting inside a host call would escape that deadline.
//!
//! They are linked over wasmtime-wasi's versions (`Linker::allow_shadowing`), so every other
//! WASI function stays wasmtime's own.

use std::future::Future;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::io::poll as async_poll;
use wasmtime_wasi::p2::bindings::io::streams as async_streams;
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::{StreamError, StreamResult};
use wasmtime_wasi::runtime::{poll_noop, with_ambient_tokio_runtime};

use async_poll::{Host as AsyncPoll, HostPollable as AsyncPollable};
use async_streams::{
    Host as AsyncStreams, HostInputStream as AsyncInput, HostOutputStream as AsyncOutput,
};

/// The resource table, seen through the non-blocking `wasi:io` implementation.
pub(crate) struct NonBlockingIo<'a>(&'a mut ResourceTable);

struct HasNonBlockingIo;

impl HasData for HasNonBlockingIo {
    type Data<'a> = NonBlockingIo<'a>;
}

/// Links the replacements over the `wasi:io/poll` and `wasi:io/streams` functions that
/// `wasmtime_wasi::p2::add_to_linker_sync` defined.
pub(crate) fn shadow_blocking_io<T: WasiView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    poll::add_to_linker::<T, HasNonBlockingIo>(linker, |t| NonBlockingIo(t.ctx().table))?;
    streams::add_to_linker::<T, HasNonBlockingIo>(linker, |t| NonBlockingIo(t.ctx().table))?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Runs `operation` to completion if it completes without waiting; otherwise a trap naming it.
fn without_waiting<F: Future>(what: &str, operation: F) -> wasmtime::Result<F::Output> {
    let mut operation = std::pin::pin!(operation);
    // The ambient runtime only matters off the proxy's threads (`sluice policy check`, tests):
    // creating a clock pollable's timer needs one to exist, not to run.
    with_ambient_tokio_runtime(|| poll_noop(operation.as_mut())).ok_or_else(|| {
        wasmtime::format_err!("policy called `{what}`, which would wait; policies may not block")
    })
}

/// The same for stream operations, whose errors carry traps in their own type.
fn stream_without_waiting<T, F>(what: &str, operation: F) -> StreamResult<T>
where
    F: Future<Output = StreamResult<T>>,
{
    without_waiting(what, operation).map_err(StreamError::Trap)?
}

impl poll::Host for NonBlockingIo<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        without_waiting("poll", AsyncPoll::poll(self.0, pollables))?
    }
}

impl poll::HostPollable for NonBlockingIo<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        without_waiting("pollable.ready", AsyncPollable::ready(self.0, pollable))?
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        without_waiting("pollable.block", AsyncPollable::block(self.0, pollable))?
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        AsyncPollable::drop(self.0, pollable)
    }
}

impl streams::Host for NonBlockingIo<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        Ok(AsyncStreams::convert_stream_error(self.0, err)?.into())
    }
}

impl streams::HostOutputStream for NonBlockingIo<'_> {
    fn drop(&mut self, stream: Resource<streams::OutputStream>) -> wasmtime::Result<()> {
        without_waiting("output-stream.drop", AsyncOutput::drop(self.0, stream))?
    }

    fn check_write(&mut self, stream: Resource<streams::OutputStream>) -> StreamResult<u64> {
        AsyncOutput::check_write(self.0, stream)
    }

    fn write(
        &mut self,
        stream: Resource<streams::OutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        AsyncOutput::write(self.0, stream, bytes)
    }

    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<streams::OutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        stream_without_waiting(
            "blocking-write-and-flush",
            AsyncOutput::blocking_write_and_flush(self.0, stream, bytes),
        )
    }

    fn write_zeroes(
        &mut self,
        stream: Resource<streams::OutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        AsyncOutput::write_zeroes(self.0, stream, len)
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<streams::OutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        stream_without_waiting(
            "blocking-write-zeroes-and-flush",
            AsyncOutput::blocking_write_zeroes_and_flush(self.0, stream, len),
        )
    }

    fn subscribe(
        &mut self,
        stream: Resource<streams::OutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        AsyncOutput::subscribe(self.0, stream)
    }

    fn flush(&mut self, stream: Resource<streams::OutputStream>) -> StreamResult<()> {
        AsyncOutput::flush(self.0, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<streams::OutputStream>) -> StreamResult<()> {
        stream_without_waiting(
            "blocking-flush",
            AsyncOutput::blocking_flush(self.0, stream),
        )
    }

    fn splice(
        &mut self,
        dst: Resource<streams::OutputStream>,
        src: Resource<streams::InputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        AsyncOutput::splice(self.0, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<streams::OutputStream>,
        src: Resource<streams::InputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        stream_without_waiting(
            "blocking-splice",
            AsyncOutput::blocking_splice(self.0, dst, src, len),
        )
    }
}

impl streams::HostInputStream for NonBlockingIo<'_> {
    fn drop(&mut self, stream: Resource<streams::InputStream>) -> wasmtime::Result<()> {
        without_waiting("input-stream.drop", AsyncInput::drop(self.0, stream))?
    }

    fn read(&mut self, stream: Resource<streams::InputStream>, len: u64) -> StreamResult<Vec<u8>> {
        AsyncInput::read(self.0, stream, len)
    }

    fn blocking_read(
        &mut self,
        stream: Resource<streams::InputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        stream_without_waiting(
            "blocking-read",
            AsyncInput::blocking_read(self.0, stream, len),
        )
    }

    fn skip(&mut self, stream: Resource<streams::InputStream>, len: u64) -> StreamResult<u64> {
        AsyncInput::skip(self.0, stream, len)
    }

    fn blocking_skip(
        &mut self,
        stream: Resource<streams::InputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        stream_without_waiting(
            "blocking-skip",
            AsyncInput::blocking_skip(self.0, stream, len),
        )
    }

    fn subscribe(
        &mut self,
        stream: Resource<streams::InputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        AsyncInput::subscribe(self.0, stream)
    }
}
