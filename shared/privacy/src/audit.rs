//! The audit trail: one event per access to personal data, chained by hash.
//!
//! A change stages its events inside its own transaction
//! ([`AuditLog::stage_in_tx`]), so a change and its events commit together
//! or not at all, without touching the chain. One sealer per service (the
//! only writer of the chain) then gives staged events their sequence numbers
//! and hashes, in the order the changes committed: changes never wait on the
//! chain head, and a crash leaves staged events that the next start seals.
//! Reads are audited through the same sealer ([`AuditLog::record`]):
//! concurrent reads share one transaction, and each read answers only after
//! its event is sealed and stored — auditing every read without one
//! database transaction per read.
//!
//! Each event's hash covers the previous event's hash and every field of the
//! event, so altering or deleting an event breaks the chain at that point;
//! the head row (last sequence and hash) catches a deleted tail. Retention
//! removes a prefix of the chain and moves the anchor forward, so what is
//! left still verifies.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use custodian_proto::audit::v1::{AuditAction, AuditOutcome, ChainVerification};
use custodian_runtime::{ApiError, Database, database::fault::Unavailable, time::Clock};
use sha2::{Digest as _, Sha256};
use sqlx::{AssertSqlSafe, Row as _, any::AnyRow};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::sealer::{Sealer, split_fields};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Rows per INSERT statement, largest first: a group is cut into these
/// sizes only, so a connection prepares at most this many distinct
/// statements (well under both backends' parameter limits).
const INSERT_SIZES: [usize; 3] = [32, 8, 1];

/// Cuts `rows` into slices of the sizes in [`INSERT_SIZES`].
fn chunks<T>(mut rows: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    for size in INSERT_SIZES {
        while rows.len() >= size {
            let (head, tail) = rows.split_at(size);
            out.push(head);
            rows = tail;
        }
    }
    out
}
/// Events chained after a head: each with its sequence number and hash,
/// and the new head.
pub(crate) struct Linked<'a> {
    pub rows: Vec<(i64, std::borrow::Cow<'a, Event>, String)>,
    pub head_seq: i64,
    pub head_hash: String,
}

/// Chains `events` after the head (`last_seq`, `prev`) of `service`'s
/// trail, made storable, undated ones dated `now`. Borrowed events stay
/// borrowed unless they need either: a pass of reads copies none.
pub(crate) fn link<'a>(
    service: &str,
    last_seq: i64,
    mut prev: String,
    events: impl IntoIterator<Item = std::borrow::Cow<'a, Event>>,
    now: i64,
) -> Linked<'a> {
    let events = events.into_iter();
    let mut rows = Vec::with_capacity(events.size_hint().0);
    for (i, mut event) in events.enumerate() {
        if event.time == 0 || !event.is_storable() {
            let owned = event.to_mut();
            *owned = std::mem::take(owned).storable();
            if owned.time == 0 {
                owned.time = now;
            }
        }
        let seq = last_seq + 1 + i as i64;
        let hash = chain_hash(&prev, service, seq, &event);
        prev.clone_from(&hash);
        rows.push((seq, event, hash));
    }
    Linked {
        head_seq: last_seq + rows.len() as i64,
        head_hash: prev,
        rows,
    }
}

/// `rows` groups of `columns` numbered placeholders: `($1,$2),($3,$4)`.
fn placeholders(rows: usize, columns: usize) -> String {
    let mut out = String::with_capacity(rows * columns * 5);
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ",(" });
        for c in 0..columns {
            if c > 0 {
                out.push(',');
            }
            out.push_str(&format!("${}", r * columns + c + 1));
        }
        out.push(')');
    }
    out
}
/// Reads waiting for one group commit, at most.
const MAX_GROUP: usize = 512;

/// One access to personal data, before it is chained.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    pub time: i64,
    pub caller: String,
    pub on_behalf_of: String,
    pub purpose: String,
    pub action: i32,
    pub method: String,
    pub resource: String,
    pub subject_ref: String,
    pub fields: Vec<String>,
    pub outcome: i32,
    pub detail: String,
}

/// The longest text any field of a stored event keeps. Events name callers,
/// methods and resource names, all bounded long before they get here; this
/// is the last line, so no caller's input can bloat the six-year trail.
const MAX_EVENT_TEXT: usize = 512;

/// Every text of an event (`&Event` gives `&String`s, `&mut Event` gives
/// `&mut String`s). Taken apart with no `..`: a text added to `Event` does
/// not compile until it is named here, so what linking checks and what
/// `storable` cleans cannot drift apart.
macro_rules! texts {
    ($event:expr) => {{
        let Event {
            time: _,
            caller,
            on_behalf_of,
            purpose,
            action: _,
            method,
            resource,
            subject_ref,
            fields,
            outcome: _,
            detail,
        } = $event;
        [
            caller,
            on_behalf_of,
            purpose,
            method,
            resource,
            subject_ref,
            detail,
        ]
        .into_iter()
        .chain(fields)
    }};
}

impl Event {
    pub fn new(action: AuditAction, outcome: AuditOutcome) -> Self {
        Self {
            action: action as i32,
            outcome: outcome as i32,
            ..Self::default()
        }
    }

    /// The event's columns after its key (`time` to `detail`, as both the
    /// staged and the sealed tables order them), for rusqlite; `fields` is
    /// [`Self::fields`] joined by commas.
    pub(crate) fn sqlite_values<'a>(
        &'a self,
        fields: &'a str,
    ) -> [rusqlite::types::ToSqlOutput<'a>; 11] {
        use rusqlite::types::{ToSqlOutput, Value, ValueRef};
        let text = |s: &'a str| ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()));
        let int = |n: i64| ToSqlOutput::Owned(Value::Integer(n));
        [
            int(self.time),
            text(&self.caller),
            text(&self.on_behalf_of),
            text(&self.purpose),
            int(i64::from(self.action)),
            text(&self.method),
            text(&self.resource),
            text(&self.subject_ref),
            text(fields),
            int(i64::from(self.outcome)),
            text(&self.detail),
        ]
    }

    /// True when [`Self::storable`] would change nothing.
    fn is_storable(&self) -> bool {
        texts!(self).all(|text| is_clean(text))
    }

    /// The event as it can always be stored: control characters (a NUL
    /// byte fails a PostgreSQL commit) replaced, every text bounded.
    fn storable(mut self) -> Self {
        for text in texts!(&mut self) {
            clean(text);
        }
        self
    }
}

fn is_clean(text: &str) -> bool {
    text.len() <= MAX_EVENT_TEXT && !text.chars().any(char::is_control)
}

fn clean(text: &mut String) {
    if is_clean(text) {
        return;
    }
    *text = text
        .chars()
        .take(MAX_EVENT_TEXT)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub service: String,
    pub seq: i64,
    pub event: Event,
    pub hash: String,
}

/// The hash of `event` at `seq`, following `prev`. Every text is prefixed
/// by its length, so the encoding is unambiguous whatever the values hold.
fn chain_hash(prev: &str, service: &str, seq: i64, e: &Event) -> String {
    let mut h = Sha256::new();
    let mut text = |t: &str| {
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    };
    text(prev);
    text(service);
    text(&e.caller);
    text(&e.on_behalf_of);
    text(&e.purpose);
    text(&e.method);
    text(&e.resource);
    text(&e.subject_ref);
    text(&e.fields.join(","));
    text(&e.detail);
    for n in [seq, e.time, i64::from(e.action), i64::from(e.outcome)] {
        h.update(n.to_le_bytes());
    }
    // Through a buffer: `hex::encode` pushes char by char, and the sealer
    // hashes every event of every read.
    let mut digits = [0u8; 64];
    hex::encode_to_slice(h.finalize(), &mut digits).expect("32 bytes are 64 hex digits");
    std::str::from_utf8(&digits)
        .expect("hex digits are ASCII")
        .to_owned()
}

/// What the sealer is asked to do.
enum Job {
    /// Store a read's event; answer once it is sealed and durable.
    Read {
        event: Box<Event>,
        done: oneshot::Sender<Sealed>,
    },
    /// Answer once every change committed before this was asked is sealed.
    Flush { done: oneshot::Sender<Sealed> },
}

/// The sealer's answer: the database's fault, when that is why the events
/// were not sealed.
type Sealed = Result<(), Option<Unavailable>>;

/// What a caller waiting on the sealer is told when its events were not
/// sealed.
fn not_sealed(failed: Option<Unavailable>, what: &'static str) -> ApiError {
    match failed {
        Some(unavailable) => ApiError::Database(unavailable),
        None => ApiError::internal(std::io::Error::other(what)),
    }
}

/// Staged events of changes taken into one sealing transaction, at most.
const SEAL_BATCH: i64 = 2048;
/// How long, after the start of the last pass, a pass waits for the reads
/// under way (see [`AuditLog::reading`]) to bring their events. A pass
/// costs the same few page writes at its commit whether it seals one event
/// or a hundred: passing again the moment the last one ended, under h2load,
/// sealed 5 events a pass, 2,700 passes a second, and the sealer's thread
/// took a third of the machine. A read with few others under way (see
/// `BUSY_READS`), or after the sealer was idle this long, is sealed at
/// once.
const PASS_SPACING: std::time::Duration = std::time::Duration::from_millis(1);
/// Reads under way, beyond those a pass holds, from which the pass waits
/// for them. Below it, waiting costs the callers more than the commits
/// it saves: four callers in turn ran at 1,900 req/s waiting and 2,700
/// not.
const BUSY_READS: usize = 8;
/// How often the sealer looks for staged events nobody woke it for: those
/// a crash left behind, or another replica's that died before sealing.
const SEAL_SWEEP: std::time::Duration = std::time::Duration::from_secs(1);

/// One service's audit trail.
#[derive(Clone)]
pub struct AuditLog {
    service: &'static str,
    db: Database,
    clock: Arc<dyn Clock>,
    queue: mpsc::Sender<Job>,
    receiver: Arc<std::sync::Mutex<Option<mpsc::Receiver<Job>>>>,
    wake: Arc<Notify>,
    /// Set by a commit that staged events, taken by the next pass: a pass
    /// for reads alone leaves the staged table alone (on PostgreSQL, its
    /// dead rows cost every look until vacuum).
    staged: Arc<AtomicBool>,
    /// Read requests under way: admitted, not yet answered.
    reading: Arc<AtomicUsize>,
    /// Read events sent to the sealer and not yet answered.
    brought: Arc<AtomicUsize>,
    /// Tells a pass waiting for the reads under way that they have brought
    /// their events (see [`AuditLog::record`]).
    go: Arc<Notify>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("service", &self.service)
            .finish()
    }
}

impl AuditLog {
    pub fn new(service: &'static str, db: Database, clock: Arc<dyn Clock>) -> Self {
        let (queue, receiver) = mpsc::channel(8 * MAX_GROUP);
        Self {
            service,
            db,
            clock,
            queue,
            receiver: Arc::new(std::sync::Mutex::new(Some(receiver))),
            wake: Arc::new(Notify::new()),
            staged: Arc::new(AtomicBool::new(false)),
            reading: Arc::new(AtomicUsize::new(0)),
            brought: Arc::new(AtomicUsize::new(0)),
            go: Arc::new(Notify::new()),
        }
    }

    /// Marks a read under way until the guard is dropped (the kit's gate
    /// holds one in each read request's extensions, so from admission to
    /// answer). The sealer lets a pass wait a little for the reads under
    /// way beyond those it holds, so that one commit serves them all, and
    /// passes at once when there are none. Only a hint: a read not marked
    /// is sealed as soon as it comes.
    pub fn reading(&self) -> Reading {
        self.reading.fetch_add(1, Ordering::AcqRel);
        Reading(self.reading.clone())
    }

    pub fn service(&self) -> &'static str {
        self.service
    }

    pub fn now(&self) -> i64 {
        self.clock.now_micros()
    }

    /// Creates the chain head (once) and starts the sealer; returns once it
    /// has sealed whatever an earlier run left staged. Call after the
    /// privacy migrations have run.
    pub async fn start(&self) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO audit_chain (service, seq, hash, anchor_seq, anchor_hash) \
             VALUES ($1, 0, $2, 0, $2) ON CONFLICT (service) DO NOTHING",
        )
        .bind(self.service)
        .bind(GENESIS)
        .execute(self.db.pool())
        .await?;
        let receiver = self
            .receiver
            .lock()
            .map_err(|_| anyhow::anyhow!("audit sealer lock poisoned"))?
            .take();
        if let Some(receiver) = receiver {
            let sealer = Sealer::new(&self.db)?;
            let sealing = Sealing {
                service: self.service,
                clock: self.clock.clone(),
                wake: self.wake.clone(),
                staged: self.staged.clone(),
                reading: self.reading.clone(),
                brought: self.brought.clone(),
                go: self.go.clone(),
            };
            // A thread and a runtime of its own: under load a task on the
            // shared runtime waits its turn behind every request after each
            // statement, and every read waits on the sealer. It ends when
            // the last AuditLog (the last sender) is dropped.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (recovered, wait) = oneshot::channel();
            std::thread::Builder::new()
                .name(format!("sealer-{}", self.service))
                .spawn(move || runtime.block_on(sealing.run(sealer, receiver, recovered)))?;
            // The service serves only once what a crash left staged is in
            // the chain.
            let _ = wait.await;
        }
        Ok(())
    }
}

/// How long one pass of a sealer takes, its commit included.
static SEAL_PASS: std::sync::LazyLock<custodian_runtime::metrics::Histogram<f64>> =
    std::sync::LazyLock::new(|| {
        custodian_runtime::metrics::duration_histogram(
            "custodian.audit.seal.duration",
            "Duration of one pass of the audit sealer (its commit included), by service",
        )
    });

/// What the sealer holds of its [`AuditLog`]: not the queue's sender, so
/// the queue closes (and the sealer ends) with the last `AuditLog`.
struct Sealing {
    service: &'static str,
    clock: Arc<dyn Clock>,
    wake: Arc<Notify>,
    staged: Arc<AtomicBool>,
    reading: Arc<AtomicUsize>,
    brought: Arc<AtomicUsize>,
    go: Arc<Notify>,
}

/// True when the reads under way have brought their events, all but a few
/// (see `BUSY_READS`): a pass that waits for them goes.
fn all_brought(reading: &AtomicUsize, brought: &AtomicUsize) -> bool {
    reading.load(Ordering::Acquire) < brought.load(Ordering::Acquire) + BUSY_READS
}

/// A read under way (see [`AuditLog::reading`]).
#[must_use]
pub struct Reading(Arc<AtomicUsize>);

impl Drop for Reading {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Sealing {
    fn now(&self) -> i64 {
        self.clock.now_micros()
    }

    /// The sealer: the only writer of the chain. Each pass takes the reads
    /// waiting on the queue and the changes' staged events, and seals them
    /// in one transaction on a native connection of its own (outside the
    /// pool, so it never waits behind requests; see [`Sealer`]).
    /// It passes again at once while work waits, and otherwise sleeps until
    /// a read arrives, a change commits, or the sweep interval passes.
    async fn run(
        self,
        mut sealer: Sealer,
        mut receiver: mpsc::Receiver<Job>,
        recovered: oneshot::Sender<()>,
    ) {
        // First what a crash left staged, before the service serves. A
        // failure here is left to the sweeps, like any other.
        loop {
            match sealer.seal(self.service, &[], SEAL_BATCH, self.now()).await {
                Ok(SEAL_BATCH) => continue,
                Ok(_) => break,
                Err(err) => {
                    tracing::error!(service = self.service, error = %err, "audit sealing failed");
                    break;
                }
            }
        }
        let _ = recovered.send(());
        let mut sweep =
            tokio::time::interval_at(tokio::time::Instant::now() + SEAL_SWEEP, SEAL_SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flushes: Vec<oneshot::Sender<Sealed>> = Vec::new();
        let mut more = false;
        let mut last_pass = tokio::time::Instant::now();
        loop {
            let mut jobs = Vec::new();
            let mut swept = false;
            if !more {
                tokio::select! {
                    job = receiver.recv() => match job {
                        Some(job) => jobs.push(job),
                        None => return,
                    },
                    () = self.wake.notified() => {}
                    _ = sweep.tick() => swept = true,
                }
            }
            while jobs.len() < MAX_GROUP {
                match receiver.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            // Reads under way that have not brought their events yet
            // will: under load, let them join this pass (see
            // PASS_SPACING). With few callers it goes at once: there, a
            // pass that waits for every one of them only makes them take
            // turns. The wait listens for `go`, not for the queue: woken by
            // every read that came, the sealer's thread took a core from
            // the workers twenty times a pass; `record` wakes it once.
            let spaced = last_pass + PASS_SPACING;
            while jobs.len() < MAX_GROUP
                && !all_brought(&self.reading, &self.brought)
                && tokio::time::Instant::now() < spaced
            {
                tokio::select! {
                    () = self.go.notified() => {}
                    () = tokio::time::sleep_until(spaced) => {}
                }
                while jobs.len() < MAX_GROUP {
                    match receiver.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
            }
            last_pass = tokio::time::Instant::now();
            let mut events = Vec::new();
            let mut reads = Vec::new();
            for job in jobs {
                match job {
                    Job::Read { event, done } => {
                        events.push(*event);
                        reads.push(done);
                    }
                    Job::Flush { done } => flushes.push(done),
                }
            }
            let batch = if more
                || swept
                || !flushes.is_empty()
                || self.staged.swap(false, Ordering::AcqRel)
            {
                SEAL_BATCH
            } else {
                0
            };
            let answered = reads.len();
            let pass = std::time::Instant::now();
            let sealed = sealer.seal(self.service, &events, batch, self.now()).await;
            SEAL_PASS.record(
                pass.elapsed().as_secs_f64(),
                &[custodian_runtime::metrics::KeyValue::new(
                    "custodian.service",
                    self.service,
                )],
            );
            let staged = match sealed {
                Ok(staged) => {
                    for done in reads {
                        let _ = done.send(Ok(()));
                    }
                    Ok(staged)
                }
                // The database is away: alone, each would fail the same
                // way (one connection attempt after another).
                Err(err) if err.fault().is_some() => {
                    for done in reads {
                        let _ = done.send(Err(err.fault()));
                    }
                    Err(err)
                }
                Err(_) => {
                    // One bad read event must not fail every other caller's
                    // read, nor hold up the changes' events: the staged
                    // events are sealed alone, then each read alone, and
                    // only what fails alone is refused.
                    let staged = sealer.seal(self.service, &[], batch, self.now()).await;
                    for (event, done) in events.iter().zip(reads) {
                        let alone = sealer
                            .seal(self.service, std::slice::from_ref(event), 0, self.now())
                            .await;
                        if let Err(err) = &alone {
                            tracing::error!(service = self.service, error = %err, "audit read event not stored");
                        }
                        let _ = done.send(alone.map(|_| ()).map_err(|e| e.fault()));
                    }
                    staged
                }
            };
            self.brought.fetch_sub(answered, Ordering::AcqRel);
            match staged {
                Ok(n) if n == SEAL_BATCH => more = true,
                Ok(_) => {
                    more = false;
                    for done in flushes.drain(..) {
                        let _ = done.send(Ok(()));
                    }
                }
                Err(err) => {
                    // Staged events stay staged: the next wake or sweep
                    // tries again. A database that is away is the probe's
                    // to report, not an error every pass.
                    match err.fault() {
                        Some(unavailable) => {
                            tracing::debug!(service = self.service, fault = ?unavailable.fault, "audit sealing waits for the database")
                        }
                        None => {
                            tracing::error!(service = self.service, error = %err, "audit sealing failed")
                        }
                    }
                    more = false;
                    for done in flushes.drain(..) {
                        let _ = done.send(Err(err.fault()));
                    }
                }
            }
        }
    }
}

impl AuditLog {
    /// Stores a read's event, sharing a commit with concurrent callers;
    /// returns once it is sealed and durable. A read whose event cannot be
    /// stored must not be answered: callers turn an error here into
    /// INTERNAL.
    pub async fn record(&self, mut event: Event) -> Result<(), ApiError> {
        if event.time == 0 {
            event.time = self.now();
        }
        let (done, wait) = oneshot::channel();
        // A place in the queue first: the count and the send then happen
        // with no await between them, so a caller that goes away cannot
        // leave its event counted and never sent.
        let place = self
            .queue
            .reserve()
            .await
            .map_err(|_| ApiError::internal(std::io::Error::other("audit sealer stopped")))?;
        self.brought.fetch_add(1, Ordering::AcqRel);
        place.send(Job::Read {
            event: Box::new(event),
            done,
        });
        if all_brought(&self.reading, &self.brought) {
            self.go.notify_one();
        }
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(failed)) => Err(not_sealed(failed, "audit event not stored")),
            Err(_) => Err(not_sealed(None, "audit event not stored")),
        }
    }

    /// Returns once every change committed before the call has its events
    /// sealed into the chain: listings show every committed change.
    pub async fn flush(&self) -> Result<(), ApiError> {
        let (done, wait) = oneshot::channel();
        self.queue
            .send(Job::Flush { done })
            .await
            .map_err(|_| ApiError::internal(std::io::Error::other("audit sealer stopped")))?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(failed)) => Err(not_sealed(failed, "audit events not sealed")),
            Err(_) => Err(not_sealed(None, "audit events not sealed")),
        }
    }

    /// Wakes the sealer: a change with staged events has committed.
    pub fn wake(&self) {
        self.staged.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Stages `events` in `tx`, commits it, and wakes the sealer: the end
    /// of every audited change.
    pub async fn commit<DB>(
        &self,
        mut tx: sqlx::Transaction<'_, DB>,
        events: &[Event],
    ) -> Result<(), ApiError>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        DB::Arguments: sqlx::IntoArguments<DB>,
        String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        self.stage_in_tx(&mut tx, events)
            .await
            .map_err(ApiError::uncommitted)?;
        tx.commit().await?;
        self.wake();
        Ok(())
    }

    /// Stages the events of a change inside the change's transaction: they
    /// commit with it or not at all, and take no lock another change waits
    /// on. The sealer chains them after the commit; call [`Self::wake`]
    /// then.
    ///
    /// Any backend whose statements take `$n` placeholders: a service's
    /// native SQLite or PostgreSQL transaction as well as sqlx's `Any`.
    pub async fn stage_in_tx<DB>(
        &self,
        tx: &mut sqlx::Transaction<'_, DB>,
        events: &[Event],
    ) -> Result<(), ApiError>
    where
        DB: sqlx::Database,
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
        DB::Arguments: sqlx::IntoArguments<DB>,
        String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        let rows = self.staged_rows(events);
        for chunk in chunks(&rows) {
            let sql = format!(
                "INSERT INTO audit_pending (service, id, time, caller, on_behalf_of, purpose, action, \
                 method, resource, subject_ref, fields, outcome, detail) VALUES {}",
                placeholders(chunk.len(), 13)
            );
            // Only placeholders are formatted into the statement.
            let mut query = sqlx::query::<DB>(AssertSqlSafe(sql));
            for (id, e) in chunk {
                query = query
                    .bind(self.service.to_owned())
                    .bind(id.clone())
                    .bind(e.time)
                    .bind(e.caller.clone())
                    .bind(e.on_behalf_of.clone())
                    .bind(e.purpose.clone())
                    .bind(i64::from(e.action))
                    .bind(e.method.clone())
                    .bind(e.resource.clone())
                    .bind(e.subject_ref.clone())
                    .bind(e.fields.join(","))
                    .bind(i64::from(e.outcome))
                    .bind(e.detail.clone());
            }
            query.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Stages the events of a change in a native SQLite transaction (the
    /// kit's grouped writer, see `SqliteWriter`); as [`Self::stage_in_tx`],
    /// call [`Self::wake`] once it has committed.
    pub fn stage_sqlite(
        &self,
        conn: &rusqlite::Connection,
        events: &[Event],
    ) -> rusqlite::Result<()> {
        let mut insert = conn.prepare_cached(
            "INSERT INTO audit_pending (service, id, time, caller, on_behalf_of, purpose, action, \
             method, resource, subject_ref, fields, outcome, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )?;
        for (id, e) in self.staged_rows(events) {
            let fields = e.fields.join(",");
            let mut params: Vec<&dyn rusqlite::ToSql> = vec![&self.service, &id];
            let values = e.sqlite_values(&fields);
            params.extend(values.iter().map(|v| v as &dyn rusqlite::ToSql));
            insert.execute(params.as_slice())?;
        }
        Ok(())
    }

    /// Events as they are staged: storable, timed, each with an id that
    /// orders it.
    fn staged_rows(&self, events: &[Event]) -> Vec<(String, Event)> {
        let now = self.now();
        events
            .iter()
            .map(|event| {
                let mut event = event.clone().storable();
                if event.time == 0 {
                    event.time = now;
                }
                (uuid::Uuid::now_v7().to_string(), event)
            })
            .collect()
    }

    /// Events by filter, oldest first, after sequence `after_seq`.
    pub async fn list(
        &self,
        filter: &Filter,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, ApiError> {
        self.flush().await?;
        // Only the filters given are written: as `($3 = '' OR resource =
        // $3)`, SQLite walked the whole trail in sequence order for every
        // filter, and the indexes by resource and by subject served nothing.
        // Numbered by hand: sqlx's QueryBuilder writes `?` for `Any`,
        // which PostgreSQL refuses.
        enum Value<'a> {
            Text(&'a str),
            Time(i64),
        }
        let mut given = Vec::new();
        if !filter.resource.is_empty() {
            given.push(("resource =", Value::Text(&filter.resource)));
        }
        if !filter.subject_ref.is_empty() {
            given.push(("subject_ref =", Value::Text(&filter.subject_ref)));
        }
        if filter.start_time > i64::MIN {
            given.push(("time >=", Value::Time(filter.start_time)));
        }
        if filter.end_time < i64::MAX {
            given.push(("time <", Value::Time(filter.end_time)));
        }
        let mut sql = String::from("SELECT * FROM audit_events WHERE service = $1 AND seq > $2");
        for (i, (condition, _)) in given.iter().enumerate() {
            sql.push_str(&format!(" AND {condition} ${}", i + 3));
        }
        sql.push_str(&format!(" ORDER BY seq LIMIT ${}", given.len() + 3));
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(self.service)
            .bind(after_seq);
        for (_, value) in given {
            query = match value {
                Value::Text(text) => query.bind(text),
                Value::Time(time) => query.bind(time),
            };
        }
        let rows = query.bind(limit).fetch_all(self.db.pool()).await?;
        rows.iter().map(stored_from_row).collect()
    }

    /// Walks the chain from its anchor to its head.
    pub async fn verify(&self) -> Result<ChainVerification, ApiError> {
        const PAGE: i64 = 1000;
        let head = sqlx::query(
            "SELECT seq, hash, anchor_seq, anchor_hash FROM audit_chain WHERE service = $1",
        )
        .bind(self.service)
        .fetch_one(self.db.pool())
        .await?;
        let head_seq: i64 = head.try_get("seq")?;
        let head_hash: String = head.try_get("hash")?;
        let mut expected_seq: i64 = head.try_get::<i64, _>("anchor_seq")? + 1;
        let mut prev: String = head.try_get("anchor_hash")?;
        let mut checked = 0;
        let unsealed = self.unsealed().await?;
        let broken = |seq: i64, problem: &str, checked: i64| ChainVerification {
            service: self.service.to_owned(),
            events_checked: checked,
            intact: false,
            broken_at_sequence: seq,
            problem: problem.to_owned(),
            unsealed_events: unsealed,
        };
        loop {
            // Up to the head read above: events appended since are checked
            // next time.
            let rows = sqlx::query(
                "SELECT * FROM audit_events WHERE service = $1 AND seq >= $2 AND seq <= $3 \
                 ORDER BY seq LIMIT $4",
            )
            .bind(self.service)
            .bind(expected_seq)
            .bind(head_seq)
            .bind(PAGE)
            .fetch_all(self.db.pool())
            .await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let stored = stored_from_row(row)?;
                if stored.seq != expected_seq {
                    return Ok(broken(expected_seq, "missing event", checked));
                }
                if chain_hash(&prev, self.service, stored.seq, &stored.event) != stored.hash {
                    return Ok(broken(stored.seq, "hash mismatch", checked));
                }
                prev = stored.hash;
                expected_seq += 1;
                checked += 1;
            }
        }
        if expected_seq - 1 != head_seq || prev != head_hash {
            return Ok(broken(
                expected_seq,
                "head mismatch: events at the end are missing",
                checked,
            ));
        }
        Ok(ChainVerification {
            service: self.service.to_owned(),
            events_checked: checked,
            intact: true,
            broken_at_sequence: 0,
            problem: String::new(),
            unsealed_events: self.unsealed().await?,
        })
    }

    /// Events of committed changes not yet sealed into the chain.
    pub async fn unsealed(&self) -> Result<i64, ApiError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM audit_pending WHERE service = $1")
            .bind(self.service)
            .fetch_one(self.db.pool())
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Removes events older than `cutoff` (at most `batch`), from the start
    /// of the chain only, and anchors the chain at the last one removed.
    pub async fn sweep_before(&self, cutoff: i64, batch: i64) -> Result<u64, ApiError> {
        let mut tx = self.db.pool().begin().await?;
        // Write first (see append_in_tx): lock the head before reading.
        let head =
            sqlx::query("UPDATE audit_chain SET seq = seq WHERE service = $1 RETURNING anchor_seq")
                .bind(self.service)
                .fetch_one(&mut *tx)
                .await?;
        let anchor: i64 = head.try_get("anchor_seq")?;
        // The chain is cut at the first event that is not yet expired, so
        // only a prefix is ever removed.
        let rows = sqlx::query(
            "SELECT seq, time, hash FROM audit_events WHERE service = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(self.service)
        .bind(anchor)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await?;
        let mut last: Option<(i64, String)> = None;
        for row in &rows {
            if row.try_get::<i64, _>("time")? >= cutoff {
                break;
            }
            last = Some((row.try_get("seq")?, row.try_get("hash")?));
        }
        let Some((seq, hash)) = last else {
            return Ok(0);
        };
        let deleted =
            sqlx::query("DELETE FROM audit_events WHERE service = $1 AND seq > $2 AND seq <= $3")
                .bind(self.service)
                .bind(anchor)
                .bind(seq)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        sqlx::query("UPDATE audit_chain SET anchor_seq = $1, anchor_hash = $2 WHERE service = $3")
            .bind(seq)
            .bind(&hash)
            .bind(self.service)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(deleted)
    }
}

/// Filters of a listing; empty strings and the full time range match all.
#[derive(Debug, Clone)]
pub struct Filter {
    pub resource: String,
    pub subject_ref: String,
    pub start_time: i64,
    pub end_time: i64,
}

fn stored_from_row(row: &AnyRow) -> Result<StoredEvent, ApiError> {
    Ok(StoredEvent {
        service: row.try_get("service")?,
        seq: row.try_get("seq")?,
        hash: row.try_get("hash")?,
        event: event_from_row(row)?,
    })
}

fn event_from_row(row: &AnyRow) -> Result<Event, ApiError> {
    Ok(Event {
        time: row.try_get("time")?,
        caller: row.try_get("caller")?,
        on_behalf_of: row.try_get("on_behalf_of")?,
        purpose: row.try_get("purpose")?,
        action: i32::try_from(row.try_get::<i64, _>("action")?).unwrap_or_default(),
        method: row.try_get("method")?,
        resource: row.try_get("resource")?,
        subject_ref: row.try_get("subject_ref")?,
        fields: split_fields(&row.try_get::<String, _>("fields")?),
        outcome: i32::try_from(row.try_get::<i64, _>("outcome")?).unwrap_or_default(),
        detail: row.try_get("detail")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_made_storable() {
        let event = Event {
            resource: format!("tenants/ac\0me/{}", "x".repeat(5000)),
            caller: "ops:a".into(),
            fields: vec!["e\u{1}mail".into()],
            ..Event::new(AuditAction::Read, AuditOutcome::Ok)
        }
        .storable();
        assert!(!event.resource.contains('\0'));
        assert_eq!(event.resource.chars().count(), MAX_EVENT_TEXT);
        assert_eq!(event.fields, ["e\u{FFFD}mail"]);
        assert_eq!(event.caller, "ops:a");
    }

    #[test]
    fn linking_copies_only_the_events_it_must_change() {
        use std::borrow::Cow;
        let clean = Event {
            time: 7,
            caller: "ops:a".into(),
            ..Event::new(AuditAction::Read, AuditOutcome::Ok)
        };
        let dirty = Event {
            fields: vec!["e\u{1}mail".into()],
            ..clean.clone()
        };
        let undated = Event {
            time: 0,
            ..clean.clone()
        };
        let events = [clean, dirty, undated];
        let linked = link(
            "svc",
            4,
            GENESIS.to_owned(),
            events.iter().map(Cow::Borrowed),
            99,
        );
        let [a, b, c] = linked.rows.as_slice() else {
            panic!("three rows");
        };
        assert!(matches!(a.1, Cow::Borrowed(_)));
        assert_eq!((a.0, b.0, c.0), (5, 6, 7));
        assert_eq!(b.1.fields, ["e\u{FFFD}mail"]);
        assert_eq!(c.1.time, 99);
        assert_eq!(linked.head_seq, 7);
        assert_eq!(linked.head_hash, c.2);
        // The same chain as from owned events.
        let owned = link(
            "svc",
            4,
            GENESIS.to_owned(),
            events.clone().map(Cow::Owned),
            99,
        );
        assert_eq!(owned.head_hash, linked.head_hash);
    }

    #[test]
    fn groups_are_cut_into_few_statement_sizes() {
        let rows: Vec<usize> = (0..75).collect();
        let sizes: Vec<usize> = chunks(&rows).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [32, 32, 8, 1, 1, 1]);
        assert_eq!(chunks(&rows).concat(), rows, "in order, nothing lost");
        assert!(chunks::<usize>(&[]).is_empty());
    }

    #[test]
    fn the_hash_covers_every_field_and_the_previous_hash() {
        let event = Event {
            time: 1,
            caller: "ops:a".into(),
            resource: "tenants/t/contacts/c".into(),
            fields: vec!["email".into()],
            ..Event::new(AuditAction::Read, AuditOutcome::Ok)
        };
        let base = chain_hash(GENESIS, "identity", 1, &event);
        assert_eq!(base, chain_hash(GENESIS, "identity", 1, &event));
        assert_ne!(base, chain_hash("1", "identity", 1, &event));
        assert_ne!(base, chain_hash(GENESIS, "identity", 2, &event));
        let mut changed = event.clone();
        changed.fields.push("phone".into());
        assert_ne!(base, chain_hash(GENESIS, "identity", 1, &changed));
        let mut changed = event;
        changed.caller = "ops:b".into();
        assert_ne!(base, chain_hash(GENESIS, "identity", 1, &changed));
    }
}
