#!/usr/bin/env bash
#
# The whole buttress test suite, as CI runs it. From any directory:
#
#   bash scripts/test.sh [--quick] [--no-install]
#
#   --quick        only the tests (skips rustfmt, clippy, rustdoc, cargo-deny
#                  and the demo run)
#   --no-install   install nothing; fail if redis-server or postgresql is missing
#   -h, --help     this text
#
# Steps, stopping at the first failure:
#   1. install what is missing: redis-server and postgresql (apt-get, with sudo
#      when not root), rustfmt/clippy components, cargo-deny
#   2. start Redis and PostgreSQL on 127.0.0.1 (scripts/services.sh), exported
#      as BUTTRESS_REDIS_URL and BUTTRESS_POSTGRES_URL, stopped on exit
#   3. cargo fmt --check, clippy -D warnings, cargo check of each crate's
#      feature combinations, the tests (cargo-nextest when
#      installed, plus doctests; else cargo test), the loom models, cargo doc with warnings
#      denied (and, when a nightly toolchain is installed, as docs.rs
#      builds: nightly with --cfg docsrs), cargo deny (licenses, bans,
#      sources), a 3-second demo run
#
# Everything builds in the debug profile. The last line of a run reads
# "<N> passed, <M> failed", counted from the test runners' own summaries.

set -euo pipefail

usage() { sed -n '3,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

quick=false
install=true
for arg in "$@"; do
    case "$arg" in
    --quick) quick=true ;;
    --no-install) install=false ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        printf 'error: unknown argument %s\n\n' "$arg" >&2
        usage >&2
        exit 2
        ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo_root=$(pwd)

section() { printf '\n==> %s\n' "$*"; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Clean clones build once: incremental artefacts only cost time and disk.
if [ "${CI:-}" = true ]; then
    export CARGO_INCREMENTAL=0
fi

# shellcheck source=SCRIPTDIR/services.sh
source "$repo_root/scripts/services.sh"

work_dir=$(mktemp -d "${TMPDIR:-/tmp}/buttress-test.XXXXXX")
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    services_stop
    rm -rf "$work_dir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----------------------------------------------------------------------------
# 1. Installs

have_postgres() { services_pg_bindir >/dev/null; }
have_redis() { command -v redis-server >/dev/null && command -v redis-cli >/dev/null; }

# Runs a command as root: directly, or through sudo (non-interactive when
# there is no terminal to ask for a password on).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        if [ -t 0 ]; then sudo "$@"; else sudo -n "$@"; fi
    else
        die "installing packages needs root, and sudo is not available; install them yourself or run as root (or pass --no-install)"
    fi
}

install_packages() {
    local missing=()
    have_redis || missing+=(redis-server)
    have_postgres || missing+=(postgresql)
    if [ "${#missing[@]}" -eq 0 ]; then
        echo "    redis-server, postgresql: present"
        return 0
    fi
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them with"
    echo "    installing ${missing[*]} (apt-get)"
    local log="$work_dir/apt.log"
    # Wait for a concurrent apt/dpkg (e.g. unattended upgrades) instead of failing.
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300)
    if ! as_root "${apt[@]}" update >"$log" 2>&1 ||
        ! as_root "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
        cat "$log" >&2
        die "apt-get could not install ${missing[*]}"
    fi
    have_redis || die "redis-server still missing after apt-get install"
    have_postgres || die "postgresql server binaries still missing after apt-get install"
}

install_rust_components() {
    local missing=()
    cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
    cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
    [ "${#missing[@]}" -eq 0 ] && return 0
    command -v rustup >/dev/null || die "missing ${missing[*]} and no rustup to add them with"
    echo "    adding ${missing[*]} (rustup)"
    rustup component add "${missing[@]}"
}

install_cargo_deny() {
    if cargo deny --version >/dev/null 2>&1; then
        echo "    $(cargo deny --version): present"
        return 0
    fi
    echo "    installing cargo-deny (cargo install, a few minutes)"
    cargo install cargo-deny --locked --quiet
}

if $install; then
    section "Installing what is missing"
    install_packages
    if ! $quick; then
        install_rust_components
        install_cargo_deny
    fi
else
    section "Skipping installs (--no-install)"
    have_redis || die "redis-server is not installed (run without --no-install to install it)"
    have_postgres || die "postgresql is not installed (run without --no-install to install it)"
fi

# ----------------------------------------------------------------------------
# 2. Services

section "Starting Redis and PostgreSQL on 127.0.0.1"
services_start || die "the test services did not start (logs above)"
echo "    BUTTRESS_REDIS_URL=$BUTTRESS_REDIS_URL"
echo "    BUTTRESS_POSTGRES_URL=$BUTTRESS_POSTGRES_URL"

# ----------------------------------------------------------------------------
# 3. Checks and tests

if ! $quick; then
    section "cargo fmt --check"
    cargo fmt --all -- --check

    section "cargo clippy (warnings denied)"
    cargo clippy --workspace --all-targets --all-features -- -D warnings

    # Each published crate must also build with its features off and one at
    # a time, not only with everything on.
    section "Feature combinations (cargo check)"
    for combo in \
        "-p buttress-core --no-default-features" \
        "-p buttress-core --no-default-features --features tonic" \
        "-p buttress-core --no-default-features --features axum" \
        "-p buttress-timeout --no-default-features" \
        "-p buttress-bulkhead --no-default-features" \
        "-p buttress-circuit-breaker --no-default-features" \
        "-p buttress-retry --no-default-features" \
        "-p buttress-rate-limit --no-default-features" \
        "-p buttress-rate-limit --no-default-features --features redis" \
        "-p buttress-metrics --no-default-features" \
        "-p buttress-metrics --no-default-features --features axum" \
        "-p buttress-metrics --no-default-features --features tonic" \
        "-p buttress-fallback --no-default-features" \
        "-p buttress-fallback --no-default-features --features metrics" \
        "-p buttress-cache --no-default-features" \
        "-p buttress-cache --no-default-features --features redis" \
        "-p buttress-health --no-default-features" \
        "-p buttress-health --no-default-features --features redis" \
        "-p buttress-health --no-default-features --features postgres" \
        "-p buttress-health --no-default-features --features tonic" \
        "-p buttress-saga --no-default-features" \
        "-p buttress-saga --no-default-features --features sqlite" \
        "-p buttress-saga --no-default-features --features postgres" \
        "-p buttress-chaos --no-default-features" \
        "-p buttress-chaos --no-default-features --features metrics" \
        "-p buttress --no-default-features" \
        "-p buttress --no-default-features --features timeout" \
        "-p buttress --no-default-features --features bulkhead" \
        "-p buttress --no-default-features --features circuit-breaker" \
        "-p buttress --no-default-features --features retry" \
        "-p buttress --no-default-features --features rate-limit" \
        "-p buttress --no-default-features --features rate-limit-redis" \
        "-p buttress --no-default-features --features metrics" \
        "-p buttress --no-default-features --features policy" \
        "-p buttress --no-default-features --features config" \
        "-p buttress --no-default-features --features macros" \
        "-p buttress --no-default-features --features fallback" \
        "-p buttress --no-default-features --features cache-redis" \
        "-p buttress --no-default-features --features health-tonic" \
        "-p buttress --no-default-features --features saga-sqlite" \
        "-p buttress --no-default-features --features chaos"; do
        echo "    cargo check $combo"
        # shellcheck disable=SC2086 # the combination is a list of words
        cargo check --quiet $combo
    done
fi

# Test output is kept to count the results afterwards; colour stays on for a
# terminal and is stripped before counting.
if [ -t 1 ]; then
    export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-always}"
fi
strip_ansi() { sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$@"; }

nextest_log="$work_dir/nextest.log"
libtest_log="$work_dir/libtest.log"
: >"$nextest_log"
: >"$libtest_log"

# Totals from libtest's "test result: ok. 3 passed; 0 failed; ..." lines.
libtest_count() { # <passed|failed>
    strip_ansi "$libtest_log" |
        sed -n "s/^test result: .* \([0-9][0-9]*\) $1;.*/\1/p" |
        awk '{ n += $1 } END { print n + 0 }'
}

# From nextest's "Summary [ 1.2s] 42 tests run: 40 passed, 2 failed, 0 skipped"
# ("5/42 tests run: ..." when cancelled). Everything run and not passed
# (failed, timed out, exec failed) counts as failed.
nextest_summary() {
    strip_ansi "$nextest_log" | grep -E '^ *Summary .*[0-9]+(/[0-9]+)? tests? run:' | tail -n 1 || true
}
nextest_count() { # <passed|failed>
    local line run passed
    line=$(nextest_summary)
    run=$(printf '%s\n' "$line" | sed -n 's/.* \([0-9][0-9]*\)\(\/[0-9][0-9]*\)\{0,1\} tests\{0,1\} run:.*/\1/p')
    passed=$(printf '%s\n' "$line" | sed -n 's/.* run: \([0-9][0-9]*\) passed.*/\1/p')
    case "$1" in
    passed) echo "${passed:-0}" ;;
    failed) echo $((${run:-0} - ${passed:-0})) ;;
    esac
}

print_totals() {
    local passed failed
    passed=$(($(libtest_count passed) + $(nextest_count passed)))
    failed=$(($(libtest_count failed) + $(nextest_count failed)))
    printf '%d passed, %d failed\n' "$passed" "$failed"
}

# A failed test run still ends with its counts, when there are any.
run_tests() { # <log> <command...>
    local log=$1
    shift
    if ! "$@" 2>&1 | tee -a "$log"; then
        echo
        if [ -n "$(nextest_summary)" ] || strip_ansi "$libtest_log" | grep -q '^test result:'; then
            print_totals
        else
            echo "error: the tests did not run (build failure above)" >&2
        fi
        exit 1
    fi
}

use_nextest=false
if cargo nextest --version >/dev/null 2>&1; then
    use_nextest=true
fi

if $use_nextest; then
    section "Tests (cargo nextest)"
    run_tests "$nextest_log" cargo nextest run --workspace --all-features --no-fail-fast

    # nextest does not run doctests.
    section "Doctests (cargo test --doc)"
    run_tests "$libtest_log" cargo test --workspace --all-features --doc
else
    section "Tests (cargo test; cargo-nextest is not installed)"
    run_tests "$libtest_log" cargo test --workspace --all-features --no-fail-fast
fi

# The lock-free state under loom: every interleaving of the model threads
# (each model bounds itself to 2 preemptions; LOOM_MAX_PREEMPTIONS
# overrides). A cfg of its own (tokio's `loom` cfg would switch tokio to
# loom as well) and a target directory of its own, so the main build stays
# cached.
section "Loom models (circuit breaker, bulkhead, rate limiter, retry budget)"
run_tests "$libtest_log" env RUSTFLAGS="--cfg buttress_loom" CARGO_TARGET_DIR="$repo_root/target/loom" \
    cargo test -p buttress-circuit-breaker -p buttress-bulkhead -p buttress-rate-limit -p buttress-retry --lib loom

if ! $quick; then
    section "cargo doc (warnings and broken intra-doc links denied)"
    RUSTDOCFLAGS="-D warnings -D rustdoc::broken_intra_doc_links" \
        cargo doc --workspace --all-features --no-deps

    # docs.rs builds with nightly rustdoc and `--cfg docsrs`, which turns on
    # the crates' nightly-only `doc_cfg` feature: a feature nightly renames
    # or removes breaks only that build, so check it where a nightly exists.
    if cargo +nightly --version >/dev/null 2>&1; then
        section "cargo +nightly doc --cfg docsrs (as docs.rs builds)"
        RUSTDOCFLAGS="--cfg docsrs -D warnings" \
            cargo +nightly doc --workspace --all-features --no-deps
    else
        section "cargo +nightly doc --cfg docsrs: skipped, no nightly toolchain installed"
    fi

    # The advisories check is left out: it fetches the RustSec database from
    # GitHub, which the build machines cannot reach.
    section "cargo deny check licenses bans sources"
    cargo deny check licenses bans sources

    # Coverage-guided fuzzing of the parsers of untrusted input, 10 s a
    # target, where a nightly toolchain and cargo-fuzz are there (the
    # proptest twins of these targets run in every suite above).
    if cargo +nightly --version >/dev/null 2>&1 && cargo fuzz --version >/dev/null 2>&1; then
        section "cargo fuzz (10 s per target)"
        for spec in core:grpc_timeout core:forwarding core:ratelimit_headers retry:retry_after rate-limit:rate; do
            (cd "crates/buttress-${spec%%:*}" && CARGO_TARGET_DIR="$repo_root/target/fuzz" \
                cargo +nightly fuzz run -O "${spec#*:}" -- -max_total_time=10)
        done
    else
        section "cargo fuzz: skipped (needs a nightly toolchain and cargo-fuzz)"
    fi

    if [ -d crates/buttress-demo ]; then
        section "Demo smoke run (3 s)"
        cargo build -p buttress-demo
        # The demo stops by itself; the timeout only catches a hang.
        timeout --kill-after=10 120 cargo run -q -p buttress-demo -- --duration 3
    fi
fi

# ----------------------------------------------------------------------------
# Summary: the runners' own summary lines, then the totals.

section "Summary"
if $use_nextest; then
    nextest_summary
    echo "    doctests: $(libtest_count passed) passed, $(libtest_count failed) failed"
else
    echo "    cargo test: $(libtest_count passed) passed, $(libtest_count failed) failed"
fi
print_totals
