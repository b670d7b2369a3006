//! Write transactions on a SQLite file, in place and grouped.
//!
//! sqlx's SQLite driver hands each statement of a transaction to its
//! connection's thread and back, while the transaction holds the file's one
//! write lock; under concurrent creates, two fifths of the server's CPU went
//! to those thread switches, and writers that found the lock taken slept in
//! SQLite's busy handler (1 ms, then 2, 5, 10...) while it sat free. Here
//! one thread owns one connection and runs whole transactions as closures:
//! the writes that queue while it is busy go together into one `BEGIN
//! IMMEDIATE ... COMMIT`, each inside a savepoint of its own, so one
//! failing write rolls back alone. A write is answered only after the
//! commit that holds it; if that commit fails, every write in it fails,
//! UNAVAILABLE when the file was locked or could not be written (SQLite
//! then kept nothing of it).

use std::{panic::AssertUnwindSafe, path::PathBuf, sync::mpsc, time::Duration};

#[cfg(test)]
use std::sync::Arc;

use tokio::sync::oneshot;

use super::fault::{self, Fault, Unavailable};
use crate::ApiError;

/// Why a group's transaction did not commit: the fault, when the file was
/// locked or could not be opened or written, and the driver's text, for
/// the log only.
struct NotCommitted {
    fault: Option<Fault>,
    why: String,
}

impl NotCommitted {
    fn of(err: &rusqlite::Error) -> Self {
        Self {
            fault: fault::of_rusqlite(err),
            why: err.to_string(),
        }
    }
}

/// Writes taken into one transaction at most: enough to share a commit's
/// page writes, few enough that a write never waits long behind others.
const GROUP: usize = 64;

/// A write waiting for the writer thread: run it inside a savepoint, then
/// answer it once the transaction's fate is known.
trait Job: Send {
    /// Runs the write; false when it failed (and its savepoint is rolled
    /// back).
    fn run(&mut self, conn: &rusqlite::Connection) -> bool;
    /// Answers the caller: `committed` carries the commit's error, if any.
    fn answer(self: Box<Self>, committed: Result<(), &NotCommitted>);
}

struct Pending<F, T, E> {
    work: Option<F>,
    outcome: Option<Result<T, E>>,
    reply: oneshot::Sender<Result<Result<T, E>, ApiError>>,
}

impl<F, T, E> Job for Pending<F, T, E>
where
    F: FnOnce(&rusqlite::Connection) -> Result<T, E> + Send,
    T: Send,
    E: Send,
{
    fn run(&mut self, conn: &rusqlite::Connection) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        // A panicking write fails alone; the thread and the other writes of
        // its transaction go on.
        match std::panic::catch_unwind(AssertUnwindSafe(|| work(conn))) {
            Ok(outcome) => {
                let ok = outcome.is_ok();
                self.outcome = Some(outcome);
                ok
            }
            Err(_) => false,
        }
    }

    fn answer(self: Box<Self>, committed: Result<(), &NotCommitted>) {
        let answer = match (committed, self.outcome) {
            // A write that failed rolled back alone; its own error stands
            // whatever became of the others.
            (_, Some(Err(err))) => Ok(Err(err)),
            (Ok(()), Some(Ok(value))) => Ok(Ok(value)),
            (Ok(()), None) => Err(ApiError::internal(std::io::Error::other(
                "a write panicked",
            ))),
            // SQLite rolls back a transaction it could not commit: nothing
            // of it was stored.
            (
                Err(NotCommitted {
                    fault: Some(found), ..
                }),
                _,
            ) => Err(ApiError::unavailable(Unavailable {
                fault: *found,
                nothing_stored: true,
            })),
            (Err(NotCommitted { fault: None, why }), _) => Err(ApiError::internal(
                std::io::Error::other(format!("the write's transaction did not commit: {why}")),
            )),
        };
        // The caller may have gone (its request was cancelled); the write
        // stands regardless, as it would have with sqlx.
        let _ = self.reply.send(answer);
    }
}

/// The writer thread of one SQLite file (see the module's comment).
#[derive(Debug)]
pub struct SqliteWriter {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl SqliteWriter {
    /// Starts the writer thread; it ends when the last handle is dropped.
    pub(crate) fn start(path: PathBuf, checkpointed: bool) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || serve(&path, checkpointed, &queue))?;
        Ok(Self { jobs })
    }

    /// Runs `work` in a write transaction, together with the writes queued
    /// beside it. The outer error is the transaction's (it did not commit,
    /// or the writer is gone); the inner one is `work`'s own, after which
    /// nothing it did is kept.
    pub async fn write<T, E>(
        &self,
        work: impl FnOnce(&rusqlite::Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<Result<T, E>, ApiError>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Pending {
            work: Some(work),
            outcome: None,
            reply,
        });
        self.jobs
            .send(job)
            .map_err(|_| ApiError::Unavailable("the database writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| ApiError::Unavailable("the database writer has stopped".into()))?
    }
}

/// Opens a SQLite connection for writing, with the pool's settings (see
/// `Database::connect_lazy`): every native writer of the file uses this.
pub fn open_for_writing(
    path: &std::path::Path,
    checkpointed: bool,
) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA secure_delete = ON; PRAGMA foreign_keys = ON;",
    )?;
    conn.busy_handler(Some(write_wait))?;
    if checkpointed {
        // The checkpointer's thread copies the log; a commit never does.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0;")?;
    }
    Ok(conn)
}

/// The native writers' busy handler. When the checkpointer starts the log
/// over it holds the write lock while it copies what was written since its
/// last pass and syncs the log and the database file: 40-50 ms under
/// h2load, every few seconds. SQLite's own handler (`busy_timeout`) sleeps
/// 1, 2, 5, 10, 15, 20, 25... ms between tries, so the sealer slept on 4 to
/// 11 ms after the lock was free, and every read waiting for its commit
/// with it; it now tries again within a millisecond.
fn write_wait(tries: i32) -> bool {
    #[cfg(test)]
    tests::WAITED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match write_step(tries) {
        Some(step) => {
            std::thread::sleep(step);
            true
        }
        None => false,
    }
}

/// The wait before try `tries + 1`: 100 µs steps for the first 10 ms, then
/// 1 ms steps, 5 s in all (the `busy_timeout` this replaces), then none.
fn write_step(tries: i32) -> Option<Duration> {
    const FINE: i32 = 100;
    const COARSE: i32 = 4_990;
    match tries {
        t if t < FINE => Some(Duration::from_micros(100)),
        t if t < FINE + COARSE => Some(Duration::from_millis(1)),
        _ => None,
    }
}

fn serve(path: &std::path::Path, checkpointed: bool, queue: &mpsc::Receiver<Box<dyn Job>>) {
    let mut connection: Option<rusqlite::Connection> = None;
    // Blocks until a write comes; ends when every sender is gone.
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let conn = match connection.take() {
            Some(conn) => conn,
            None => match open_for_writing(path, checkpointed) {
                Ok(conn) => conn,
                Err(err) => {
                    let failed = NotCommitted::of(&err);
                    for job in group {
                        job.answer(Err(&failed));
                    }
                    continue;
                }
            },
        };
        match run_group(&conn, &mut group) {
            Ok(()) => {
                for job in group {
                    job.answer(Ok(()));
                }
                connection = Some(conn);
            }
            Err(err) => {
                // A fresh connection next time, in case this one broke.
                let failed = NotCommitted::of(&err);
                for job in group {
                    job.answer(Err(&failed));
                }
            }
        }
    }
}

fn run_group(conn: &rusqlite::Connection, group: &mut [Box<dyn Job>]) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let outcome = (|| {
        for job in group.iter_mut() {
            conn.execute_batch("SAVEPOINT write")?;
            if job.run(conn) {
                conn.execute_batch("RELEASE write")?;
            } else {
                conn.execute_batch("ROLLBACK TO write; RELEASE write")?;
            }
        }
        conn.execute_batch("COMMIT")
    })();
    if outcome.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls of [`write_wait`]: the test below lets the lock go once a
    /// writer is waiting for it.
    pub(super) static WAITED: std::sync::atomic::AtomicUsize =
        std::sync::atomic::AtomicUsize::new(0);

    /// A native writer that finds the write lock taken waits for it, in
    /// steps of at most a millisecond, for as long as `busy_timeout` did.
    #[test]
    fn a_writer_waits_for_the_lock_in_short_steps() {
        let steps: Vec<Duration> = (0..).map_while(write_step).collect();
        assert_eq!(steps.iter().sum::<Duration>(), Duration::from_secs(5));
        assert!(steps.iter().all(|step| *step <= Duration::from_millis(1)));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.db");
        let holder = rusqlite::Connection::open(&path).unwrap();
        holder
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v INTEGER);")
            .unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        // Other tests' writers in this process may have waited already.
        let waited = WAITED.load(std::sync::atomic::Ordering::Relaxed);
        let writer = std::thread::spawn({
            let path = path.clone();
            move || {
                let conn = open_for_writing(&path, false).unwrap();
                conn.execute("INSERT INTO t VALUES (1)", [])
            }
        });
        // The lock goes once the writer has found it taken and is waiting
        // (without a busy handler its insert fails at once with
        // SQLITE_BUSY), or once the writer has given up.
        while WAITED.load(std::sync::atomic::Ordering::Relaxed) == waited && !writer.is_finished() {
            std::thread::yield_now();
        }
        holder.execute_batch("COMMIT").unwrap();
        assert_eq!(writer.join().unwrap().unwrap(), 1);
        let rows: i64 = holder
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
    }

    /// Writes queued together share a transaction, yet one that fails is
    /// rolled back alone and answered with its own error, one that panics
    /// fails alone, and every other is answered only once committed: a
    /// connection of its own then sees exactly those.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_rolls_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writes.db");
        let setup = rusqlite::Connection::open(&path).unwrap();
        setup
            .execute_batch(
                "PRAGMA journal_mode = WAL; \
                 CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE); \
                 INSERT INTO t (k, v) VALUES (-1, 'taken');",
            )
            .unwrap();
        let writer = Arc::new(SqliteWriter::start(path.clone(), false).unwrap());
        let mut writes = Vec::new();
        for k in 0..200_i64 {
            let writer = writer.clone();
            writes.push(tokio::spawn(async move {
                writer
                    .write(move |conn| {
                        // Every tenth write takes a value that is already
                        // taken, whatever order the writes arrive in; the
                        // statement before it must go too.
                        let v = if k % 10 == 9 {
                            "taken".to_owned()
                        } else {
                            format!("v{k}")
                        };
                        conn.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", (k + 1000, k))?;
                        assert!(k != 77, "a write that panics");
                        conn.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", (k, v))
                    })
                    .await
            }));
        }
        let mut kept = Vec::new();
        for (k, write) in writes.into_iter().enumerate() {
            let k = k as i64;
            match write.await.unwrap() {
                Ok(Ok(1)) => kept.push(k),
                Ok(Err(err)) => {
                    assert_eq!(k % 10, 9, "write {k} failed: {err}");
                    assert_eq!(
                        err.sqlite_error_code(),
                        Some(rusqlite::ErrorCode::ConstraintViolation)
                    );
                }
                Err(_) => assert_eq!(k, 77, "only the panicking write fails outright"),
                other => panic!("write {k}: {other:?}"),
            }
        }
        assert_eq!(kept.len(), 200 - 20 - 1);
        let mut stored: Vec<i64> = setup
            .prepare("SELECT k FROM t WHERE k BETWEEN 0 AND 999 ORDER BY k")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        stored.sort_unstable();
        assert_eq!(stored, kept);
        // A failed write's first statement went with it.
        let firsts: i64 = setup
            .query_row("SELECT count(*) FROM t WHERE k >= 1000", [], |r| r.get(0))
            .unwrap();
        assert_eq!(firsts, kept.len() as i64);
    }
}
