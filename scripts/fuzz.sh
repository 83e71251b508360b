#!/usr/bin/env bash
# Fuzzing with cargo-fuzz (libFuzzer) on the nightly toolchain; the targets are the [[bin]]s of
# fuzz/Cargo.toml (every one, so a new target is picked up without editing this script).
#
#   scripts/fuzz.sh smoke [SECONDS]            build every target, run each SECONDS (default 20)
#   scripts/fuzz.sh campaign TARGET RUNS [ARG...]
#                                              run one target for RUNS executions and print what
#                                              libFuzzer reports; ARGs go to libFuzzer
#   scripts/fuzz.sh list                       the targets
#
# Both modes fuzz a scratch copy of the checked-in seed corpus (fuzz/corpus/<target>/), so the
# repository is never written to; the scratch directory (and any crash input in it) is kept and
# printed. Either mode exits non-zero, naming the target and the crash input, when a target
# crashes (panic, failed assertion, sanitizer report, timeout, out of memory).
#
# Environment: CARGO_TARGET_DIR (default fuzz/target), FUZZ_WORK (scratch directory; default a new
# temporary one), FUZZ_TIMEOUT (seconds one input may take; default 30), FUZZ_JOBS (targets the
# smoke runs at once; default one per core).
# The build is pinned by fuzz/Cargo.lock (`cargo fetch --locked` fails when it is stale: cargo
# fuzz has no --locked of its own). Tools: scripts/setup.sh installs nightly and cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target_dir=${CARGO_TARGET_DIR:-$root/fuzz/target}
timeout=${FUZZ_TIMEOUT:-30}
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin_dir=$target_dir/$triple/release

usage() {
  sed -n '4,9p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

targets() {
  cargo +nightly fuzz list --fuzz-dir fuzz
}

build() {
  if ! cargo +nightly fetch --locked --manifest-path fuzz/Cargo.toml >/dev/null 2>&1; then
    echo "fuzz: fuzz/Cargo.lock is missing or stale; update it with" >&2
    echo "  cargo +nightly update --workspace --manifest-path fuzz/Cargo.toml" >&2
    echo "and commit it" >&2
    exit 1
  fi
  # Default build: optimized, with debug assertions and AddressSanitizer.
  cargo +nightly fuzz build --fuzz-dir fuzz --target-dir "$target_dir" "$@"
}

# A fresh scratch directory for one target, its corpus seeded from the checked-in one.
scratch() {
  local target=$1 dir
  if [ -n "${FUZZ_WORK:-}" ]; then
    dir=$FUZZ_WORK/$target
    rm -rf "$dir"
  else
    dir=$(mktemp -d "${TMPDIR:-/tmp}/sluice-fuzz-$target.XXXXXX")
  fi
  mkdir -p "$dir/corpus" "$dir/artifacts"
  if [ -d "fuzz/corpus/$target" ]; then
    cp -R "fuzz/corpus/$target/." "$dir/corpus/"
  fi
  echo "$dir"
}

# Runs one target on its scratch corpus; on a crash names the target and the input.
run() {
  local target=$1 dir=$2 status=0
  shift 2
  "$bin_dir/$target" "$dir/corpus" -artifact_prefix="$dir/artifacts/" -timeout="$timeout" \
    -print_final_stats=1 "$@" >"$dir/log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$dir/log" >&2
    local input
    input=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$dir/log" | tail -n 1)
    echo "fuzz: target $target FAILED (libFuzzer exit $status); input: ${input:-none written}; log: $dir/log" >&2
    return 1
  fi
}

# The figures libFuzzer reports at the end of a run.
report() {
  local target=$1 dir=$2 runs rate secs files bytes
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$dir/log" | tail -n 1)
  secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$dir/log" | tail -n 1)
  files=$(find "$dir/corpus" -type f | wc -l)
  bytes=$(du -sb "$dir/corpus" | cut -f1)
  echo "fuzz: $target: ${runs:-?} executions in ${secs:-?} s, ${rate:-?} exec/s, corpus $files files ($bytes bytes) in $dir/corpus"
}

mode=${1:-}
case $mode in
  list)
    targets
    ;;
  smoke)
    seconds=${2:-20}
    build
    mapfile -t all < <(targets)
    [ ${#all[@]} -gt 0 ] || { echo "fuzz: no targets in fuzz/Cargo.toml" >&2; exit 1; }
    # One libFuzzer process per core at a time (each is single-threaded): the smoke's wall time
    # is what CI pays, and it grows with every target.
    jobs=${FUZZ_JOBS:-$(nproc)}
    dirs=()
    for target in "${all[@]}"; do
      while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
        wait -n || true
      done
      dir=$(scratch "$target")
      dirs+=("$dir")
      (
        if run "$target" "$dir" -max_total_time="$seconds" 2>"$dir/failure"; then
          report "$target" "$dir" >"$dir/summary"
        fi
      ) &
    done
    wait
    failed=()
    for i in "${!all[@]}"; do
      if [ -s "${dirs[$i]}/summary" ]; then
        cat "${dirs[$i]}/summary"
      else
        cat "${dirs[$i]}/failure" >&2
        failed+=("${all[$i]}")
      fi
    done
    if [ ${#failed[@]} -gt 0 ]; then
      echo "fuzz: smoke FAILED: ${failed[*]}" >&2
      exit 1
    fi
    echo "fuzz: smoke passed: ${#all[@]} targets, ${seconds} s each"
    ;;
  campaign)
    [ $# -ge 3 ] || usage
    target=$2 runs=$3
    shift 3
    # Not `targets | grep -q`: grep stopping early would break cargo fuzz's pipe.
    grep -qx -- "$target" <<<"$(targets)" || { echo "fuzz: unknown target $target" >&2; exit 2; }
    build "$target"
    dir=$(scratch "$target")
    echo "fuzz: $target: $bin_dir/$target $dir/corpus -runs=$runs $*"
    run "$target" "$dir" -runs="$runs" "$@"
    report "$target" "$dir"
    ;;
  *)
    usage
    ;;
esac
