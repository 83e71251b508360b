# Shared by the side-by-side scripts (sourced): what a proxy process costs, read from /proc.

# CPU ticks (utime + stime) of a process and its direct children (nginx's worker is a child).
ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    [ -r "/proc/$p/stat" ] || continue
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}

# Resident memory in KiB of a process and its direct children.
rss_kb() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    [ -r "/proc/$p/status" ] || continue
    total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status")))
  done
  echo "$total"
}

# Clock ticks per second, to turn `ticks` into seconds.
hz=$(getconf CLK_TCK)
