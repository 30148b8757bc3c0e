//! Policies around plain async code, outside tower: the attribute
//! `#[buttress::resilient(policy = "database")]` on an `async fn`, and
//! `PolicySet::execute("database", || async { ... })` on a closure.
//!
//! Both run under the same named policy of one `PolicySet`. The attribute
//! looks its policy up in the process-wide set (`buttress::policy::global()`),
//! so the example installs its set there first; without that, the five
//! presets are there under their own names. The set comes from a policy
//! file's text: the `database` preset (3 attempts with exponential backoff
//! from 50 ms, a breaker, a bulkhead), with its timeouts shortened so that
//! the example runs in a second.
//!
//! The "database" is a small line protocol on 127.0.0.1: send an item's
//! name, read its stock. The example makes it drop connections and hang
//! on purpose, and shows:
//! 1. a function under `#[resilient]` whose first two connections are
//!    dropped: the policy's retry calls the body again, and it answers;
//! 2. a closure under `PolicySet::execute` whose server hangs: each attempt
//!    is cut at 300 ms, and after 3 attempts the caller gets the retry's
//!    `RetryExhausted`, with the last attempt's timeout as its source
//!    (`kind_of` names both).
//!
//! `cargo run -p buttress-examples --example resilient_macro`; its test is
//! `examples/tests/resilient_macro.rs`.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use buttress::core::error::{chain, kind_of, ErrorKind};
use buttress::policy::{PolicySet, PolicySpec};
use buttress::{resilient, BoxError, Registry};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The policy file: the `database` preset, its timeouts shortened.
pub(crate) const POLICIES: &str = r#"
[policies.database]
preset = "database"
timeout = "1500ms"        # the whole call, retries included
attempt_timeout = "300ms" # each attempt
"#;

/// The stock of `item`, asked over a new connection. A dropped
/// connection or a hung server fails this attempt; the policy decides
/// whether there is another. Each attempt gets its own copy of the
/// arguments.
#[resilient(policy = "database")]
async fn stock(db: SocketAddr, item: String) -> Result<u32, BoxError> {
    ask(db, &item).await
}

/// One question to the database: `item\n` out, `count\n` back.
async fn ask(db: SocketAddr, item: &str) -> Result<u32, BoxError> {
    let mut conn = TcpStream::connect(db).await?;
    conn.write_all(format!("{item}\n").as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).await?;
    if line.is_empty() {
        return Err("the database closed the connection".into());
    }
    Ok(line.trim().parse()?)
}

/// The database's switch, set by the example, and its connection count.
#[derive(Default)]
struct Database {
    /// Connections accepted.
    connections: AtomicU32,
    /// The next connections to close without an answer.
    drop_next: AtomicU32,
}

/// Serves the line protocol: `bolts` has 120 in stock, `nuts` 80, and a
/// question about `slow-item` is never answered.
async fn serve(listener: TcpListener, db: Arc<Database>) {
    while let Ok((conn, _)) = listener.accept().await {
        db.connections.fetch_add(1, Ordering::SeqCst);
        let dropped = db
            .drop_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
            .is_ok();
        if dropped {
            drop(conn);
            continue;
        }
        tokio::spawn(async move {
            let (read, mut write) = conn.into_split();
            let mut item = String::new();
            if BufReader::new(read).read_line(&mut item).await.is_err() {
                return;
            }
            let answer = match item.trim() {
                "bolts" => "120\n",
                "nuts" => "80\n",
                // Hangs (longer than any attempt may take), then gives up.
                _ => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    return;
                }
            };
            let _ = write.write_all(answer.as_bytes()).await;
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    for line in run().await? {
        println!("{line}");
    }
    Ok(())
}

/// Fails with `what` unless `ok`: the example checks what it shows.
fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), BoxError> {
    if ok {
        Ok(())
    } else {
        Err(what().into())
    }
}

/// Runs the example (once per process: it installs the process-wide
/// policy set); one line per step, an error if a step goes otherwise.
pub(crate) async fn run() -> Result<Vec<String>, BoxError> {
    let registry = Registry::new();
    let policies = PolicySet::new(PolicySpec::from_toml(POLICIES)?, &registry)?;
    // The set is a shared handle: the global one and `policies` are the
    // same policies, the same breaker and bulkhead.
    policies
        .clone()
        .install_global()
        .map_err(|_| "a process-wide policy set is installed already")?;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let db = Arc::new(Database::default());
    let server = tokio::spawn(serve(listener, db.clone()));
    let mut lines = Vec::new();

    // 1. `#[resilient]`: two dropped connections, then the answer.
    db.drop_next.store(2, Ordering::SeqCst);
    let before = db.connections.load(Ordering::SeqCst);
    let bolts = stock(addr, "bolts".to_owned()).await?;
    let tries = db.connections.load(Ordering::SeqCst) - before;
    let line = format!("#[resilient] stock(bolts) = {bolts}, after {tries} connections");
    ensure(bolts == 120 && tries == 3, || line.clone())?;
    lines.push(line);

    // 2. `PolicySet::execute`: plain async code, here a closure, under the
    //    same policy. The server hangs: each attempt ends at 300 ms.
    let before = db.connections.load(Ordering::SeqCst);
    let result = policies
        .execute("database", || async { ask(addr, "slow-item").await })
        .await;
    let tries = db.connections.load(Ordering::SeqCst) - before;
    let err = match result {
        Ok(n) => return Err(format!("slow-item answered {n}: the server should hang").into()),
        Err(e) => e,
    };
    // The retry gave up (`RetryExhausted`); the last attempt's error, its
    // source, says why: the attempt timed out.
    let kind = kind_of(&*err);
    let cause = chain(&*err).skip(1).find_map(kind_of);
    let line =
        format!("execute(slow-item): {kind:?}, last attempt {cause:?}, after {tries} connections");
    ensure(
        kind == Some(ErrorKind::RetryExhausted) && cause == Some(ErrorKind::Timeout) && tries == 3,
        || format!("{line}: {err}"),
    )?;
    lines.push(line);

    // 3. A plain call under `execute`, no failure: one connection.
    let nuts = policies
        .execute("database", || async { ask(addr, "nuts").await })
        .await?;
    let line = format!("execute(nuts) = {nuts}");
    ensure(nuts == 80, || line.clone())?;
    lines.push(line);

    // The instances the policy built are in the registry, by name.
    let mut names = registry.names();
    names.sort();
    lines.push(format!("registry: {}", names.join(", ")));

    server.abort();
    Ok(lines)
}
