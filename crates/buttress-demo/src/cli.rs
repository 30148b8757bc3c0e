//! Command-line arguments, parsed by hand: three flags do not need a parser.

use std::time::Duration;

use crate::DemoConfig;

/// The help text.
pub const USAGE: &str = "\
buttress-demo: a gateway protected by buttress in front of a flaky upstream

Starts, on 127.0.0.1, an upstream that turns slow and error-prone in phases
and an axum gateway protected by a rate limit per client, a bulkhead, a
fallback (a canned 200 while the circuit breaker is open), a circuit breaker
and a timeout, which retries the upstream's 503s within a budget. Its /hot
route is cached (served stale while the upstream fails), and it serves
/health/live and /health/ready (503 while the breaker is open). Order sagas
run alongside (logged in SQLite in a temporary directory, removed at the
end), their payment step calling the upstream. It drives closed-loop load at
the gateway (and bursts from one client, over its rate limit) and prints,
each second, what every pattern did: fallback answers, cache hits and stale
answers, sagas completed and compensated, readiness. Then it sends the same
load, with the upstream degraded again, through a gateway without buttress
for a few seconds, and compares. While it runs, it serves the layers'
metrics at http://127.0.0.1:<port>/metrics (Prometheus text format; the
URL is printed at the start), and the report reads its counters from there.

USAGE:
    buttress-demo [--duration <secs>] [--concurrency <n>] [--compare <secs>]

OPTIONS:
    --duration <secs>    how long the load runs, 1 to 3600 (default 20)
    --concurrency <n>    steady clients, each with one request in flight, 1 to 4096
                         (default 48), besides the bursting one
    --compare <secs>     how long the unprotected comparison runs, 0 (none) to 60
                         (default 3; at most the length of the degraded phase)
    -h, --help           print this help
";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the demo.
    Run(DemoConfig),
    /// Print [`USAGE`].
    Help,
}

/// Parses the arguments, without the program name. `--flag value` and
/// `--flag=value` are both accepted. The error is a one-line message.
///
/// ```
/// use buttress_demo::{parse_args, Command};
/// use std::time::Duration;
///
/// let Command::Run(config) = parse_args(["--duration", "8"]).unwrap() else { panic!() };
/// assert_eq!(config.duration, Duration::from_secs(8));
/// assert_eq!(config.concurrency, 48);
/// assert!(parse_args(["--rps", "10"]).is_err());
/// ```
pub fn parse_args<I, S>(args: I) -> Result<Command, String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut config = DemoConfig::default();
    let mut args = args.into_iter().map(Into::into);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg, None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--duration" => {
                let secs = number(&value("--duration")?, "--duration", 1, 3600)?;
                config.duration = Duration::from_secs(secs);
            }
            "--concurrency" => {
                let n = number(&value("--concurrency")?, "--concurrency", 1, 4096)?;
                config.concurrency = usize::try_from(n).unwrap_or(usize::MAX);
            }
            "--compare" => {
                let secs = number(&value("--compare")?, "--compare", 0, 60)?;
                config.compare = Duration::from_secs(secs);
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Command::Run(config))
}

fn number(text: &str, flag: &str, min: u64, max: u64) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{flag} takes a whole number from {min} to {max}, not `{text}`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> DemoConfig {
        match parse_args(args.iter().copied()) {
            Ok(Command::Run(config)) => config,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_without_arguments() {
        assert_eq!(run(&[]), DemoConfig::default());
    }

    #[test]
    fn both_flags_in_both_spellings() {
        let c = run(&["--duration", "8", "--concurrency=12"]);
        assert_eq!(c.duration, Duration::from_secs(8));
        assert_eq!(c.concurrency, 12);
        let c = run(&["--duration=3", "--concurrency", "1"]);
        assert_eq!(c.duration, Duration::from_secs(3));
        assert_eq!(c.concurrency, 1);
    }

    #[test]
    fn the_comparison_can_be_shortened_or_left_out() {
        assert_eq!(DemoConfig::default().compare, Duration::from_secs(3));
        assert_eq!(run(&["--compare", "5"]).compare, Duration::from_secs(5));
        assert_eq!(run(&["--compare=0"]).compare, Duration::ZERO);
        assert!(parse_args(["--compare", "61"]).is_err());
    }

    #[test]
    fn help_wins() {
        assert_eq!(parse_args(["--duration", "5", "-h"]), Ok(Command::Help));
        assert_eq!(parse_args(["--help"]), Ok(Command::Help));
    }

    #[test]
    fn bad_input_is_a_message() {
        assert_eq!(
            parse_args(["--duration"]),
            Err("--duration needs a value".to_owned())
        );
        assert_eq!(
            parse_args(["--duration", "0"]),
            Err("--duration takes a whole number from 1 to 3600, not `0`".to_owned())
        );
        assert!(parse_args(["--concurrency", "many"]).is_err());
        assert_eq!(
            parse_args(["extra"]),
            Err("unknown argument `extra`".to_owned())
        );
    }
}
