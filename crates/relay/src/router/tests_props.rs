//! The router's counters against what it actually queues, under random traffic.
//!
//! The router keeps running counts (frames and bytes per endpoint and lane, control bytes,
//! uncommitted bytes per lane, envelope bytes per sender and in total for the global budget)
//! rather than summing its queues on every frame; the overload bound, the budget and the
//! shell's back-pressure read them. A count that drifts refuses traffic it should take
//! (`Overloaded`), lets the budget be passed, or never pauses a reader. The property: after every input, every count
//! equals the sum recomputed from the queues ([`Router::counter_drift`]).
//!
//! The inputs are what a shell and honest or careless nodes produce: connections, replacements
//! and disconnections of either endpoint (also while frames are being written), envelopes of
//! any precedence, transport and size (escalations and duplicates included, some on the wrong
//! stream), receipts, escalation notices, announcements, link tests, writers taking frames and
//! reporting them written (late, after their connection is gone, too), commits of some or all
//! writes, and time passing past the time-to-live. The in-memory window is small, so envelopes
//! leave memory and are read back from the (modelled) store before they are written.
//!
//! The shell commits like the relay's store writer: every urgent write, then a prefix of the
//! bulk writes, so urgent writes often commit before earlier bulk ones (see `commit`). A second
//! property checks that this reordering is safe: once everything is committed, the rows the
//! store holds are exactly those it would hold had every write been committed in issue order.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use hotline_proto::testing::{self, id};
use hotline_proto::{Lane, Precedence, Time};
use proptest::prelude::*;

use super::{
    CommitId, ConnId, ConnectError, Limits, Output, Router, StoreOp, Transmit, Ttl, WriteClass,
};

/// Endpoints: us is paired with jp and with uk.
const NAMES: [&str; 3] = ["us", "jp", "uk"];

fn partner(from: usize, pick: usize) -> usize {
    if from == 0 { 1 + pick % 2 } else { 0 }
}

#[derive(Clone, Debug)]
enum Op {
    Connect(usize),
    Disconnect(usize),
    Envelope {
        from: usize,
        to: usize,
        precedence: Precedence,
        seq: u64,
        transport: Precedence,
        sealed: usize,
        /// Sent on this stream instead of its own, if set.
        wrong: Option<Lane>,
    },
    Delivered {
        from: usize,
        to: usize,
        precedence: Precedence,
        upto: u64,
    },
    Escalation {
        from: usize,
        to: usize,
    },
    Announcement {
        from: usize,
        epoch: u32,
    },
    LinkTest {
        from: usize,
        to: usize,
    },
    /// The writer of this stream of the endpoint's connection takes its next frame.
    Take(usize, Lane),
    /// One taken frame (chosen by index) is reported written to the connection it was taken for.
    Written(usize),
    /// Every writer of the endpoint's connection takes and writes all it can.
    Flush(usize),
    /// The store commits every urgent write pending and this many bulk ones (modulo the number
    /// pending plus one), as one group commit.
    Commit(usize),
    Advance(u64),
}

fn precedence() -> impl Strategy<Value = Precedence> {
    prop::sample::select(Precedence::ALL.to_vec())
}

fn lane() -> impl Strategy<Value = Lane> {
    prop::sample::select(Lane::ALL.to_vec())
}

fn op() -> impl Strategy<Value = Op> {
    let ep = 0..NAMES.len();
    prop_oneof![
        2 => ep.clone().prop_map(Op::Connect),
        1 => ep.clone().prop_map(Op::Disconnect),
        8 => (
            ep.clone(),
            0..2usize,
            precedence(),
            1..6u64,
            precedence(),
            0..300usize,
            prop::option::weighted(0.1, lane()),
        )
            .prop_map(|(from, pick, precedence, seq, transport, sealed, wrong)| {
                Op::Envelope {
                    from,
                    to: partner(from, pick),
                    precedence,
                    seq,
                    transport,
                    sealed,
                    wrong,
                }
            }),
        2 => (ep.clone(), 0..2usize, precedence(), 0..6u64).prop_map(
            |(from, pick, precedence, upto)| Op::Delivered {
                from,
                to: partner(from, pick),
                precedence,
                upto,
            }
        ),
        1 => (ep.clone(), 0..2usize).prop_map(|(from, pick)| Op::Escalation {
            from,
            to: partner(from, pick),
        }),
        1 => (ep.clone(), 0..4u32).prop_map(|(from, epoch)| Op::Announcement { from, epoch }),
        1 => (ep.clone(), 0..2usize).prop_map(|(from, pick)| Op::LinkTest {
            from,
            to: partner(from, pick),
        }),
        5 => (ep.clone(), lane()).prop_map(|(e, l)| Op::Take(e, l)),
        4 => any::<usize>().prop_map(Op::Written),
        2 => ep.prop_map(Op::Flush),
        3 => any::<usize>().prop_map(Op::Commit),
        1 => (0..15u64).prop_map(Op::Advance),
    ]
}

/// Signed frames by what they say, built once per thread: signing in a debug build is slow.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Signed {
    Delivered(usize, usize, Precedence, u64),
    Escalation(usize, usize),
    Announcement(usize, u32),
    LinkTest(usize, usize),
}

thread_local! {
    static SIGNED: RefCell<BTreeMap<Signed, Bytes>> = const { RefCell::new(BTreeMap::new()) };
}

fn signed(what: Signed) -> Bytes {
    SIGNED.with(|cache| {
        cache
            .borrow_mut()
            .entry(what)
            .or_insert_with(|| {
                Bytes::from(match what {
                    Signed::Delivered(f, t, p, upto) => {
                        testing::delivered(NAMES[f], NAMES[t], p, upto)
                    }
                    Signed::Escalation(f, t) => testing::escalation(NAMES[f], NAMES[t], 1),
                    Signed::Announcement(f, epoch) => testing::announcement(NAMES[f], epoch),
                    Signed::LinkTest(f, t) => testing::link_test(NAMES[f], NAMES[t]),
                })
            })
            .clone()
    })
}

/// The rows a store holds: envelopes, control frames and announcements by key.
#[derive(Debug, Default, PartialEq, Eq)]
struct Rows {
    envelopes: BTreeMap<u64, (String, Precedence, Bytes)>,
    control: BTreeMap<u64, Bytes>,
    announcements: BTreeMap<String, Bytes>,
}

impl Rows {
    fn apply(&mut self, ops: &[StoreOp]) {
        for op in ops {
            match op {
                StoreOp::PutEnvelope(e) => {
                    let row = (e.destination.to_string(), e.lane, e.bytes.clone());
                    self.envelopes.insert(e.order, row);
                }
                StoreOp::DeleteEnvelope { order } => {
                    self.envelopes.remove(order);
                }
                StoreOp::PutControl(c) => {
                    self.control.insert(c.key, c.bytes.clone());
                }
                StoreOp::DeleteControl { key } => {
                    self.control.remove(key);
                }
                StoreOp::PutAnnouncement(a) => {
                    self.announcements
                        .insert(a.endpoint.to_string(), a.bytes.clone());
                }
            }
        }
    }
}

type Write = (CommitId, Vec<StoreOp>);

/// A shell around the router: connections, taken frames, issued writes per class, and the
/// store's rows as committed and as they would be in issue order.
struct Shell {
    router: Router,
    now: Time,
    next_conn: u64,
    conns: [Option<ConnId>; NAMES.len()],
    taken: Vec<(ConnId, Transmit)>,
    urgent: VecDeque<Write>,
    bulk: VecDeque<Write>,
    /// What the store holds: writes applied in the order they were committed.
    committed: Rows,
    /// Every write applied as soon as it is issued, in issue order.
    in_order: Rows,
}

impl Shell {
    fn new() -> Result<Self, String> {
        let hotlines = [(id("us"), id("jp")), (id("us"), id("uk"))];
        // A small bound and budget (quotas of 500 bytes for three endpoints), so overload and
        // budget refusals happen within a run; short time-to-live on the lower lanes, so
        // expiries do.
        let limits = Limits {
            max_queue_bytes: 1_500,
            max_queued_bytes_total: 3_000,
            // Small, so envelopes go cold and are read back within a run.
            max_in_memory_bytes: 600,
            ttl: Ttl {
                routine: Some(Duration::from_secs(10)),
                priority: Some(Duration::from_secs(20)),
                ..Ttl::NEVER
            },
            identity: super::IdentityLimits::default(),
        };
        let Ok(router) = Router::new(&hotlines, limits) else {
            unreachable!("a valid configuration")
        };
        let mut shell = Self {
            router,
            now: Time(1_000_000_000),
            next_conn: 1,
            conns: [None; NAMES.len()],
            taken: Vec::new(),
            urgent: VecDeque::new(),
            bulk: VecDeque::new(),
            committed: Rows::default(),
            in_order: Rows::default(),
        };
        // Everyone starts online, so traffic flows from the first step; the ops take them
        // offline, replace and reconnect them.
        for e in 0..NAMES.len() {
            shell.apply(&Op::Connect(e))?;
        }
        Ok(shell)
    }

    /// Sends `bytes` from endpoint `from` on `stream`, if it is connected.
    fn send(&mut self, from: usize, stream: Lane, bytes: Bytes) {
        if let Some(conn) = self.conns[from] {
            self.router.handle_frame(self.now, conn, stream, bytes);
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Connect(e) => {
                let conn = ConnId(self.next_conn);
                self.next_conn += 1;
                match self.router.handle_connected(self.now, conn, id(NAMES[e])) {
                    Ok(_) => self.conns[e] = Some(conn),
                    // A flapping identity: the live connection is kept.
                    Err(ConnectError::IdentityInUse { .. }) => {}
                    Err(err) => return Err(err.to_string()),
                }
            }
            Op::Disconnect(e) => {
                if let Some(conn) = self.conns[e].take() {
                    self.router.handle_disconnected(conn);
                }
            }
            Op::Envelope {
                from,
                to,
                precedence,
                seq,
                transport,
                sealed,
                wrong,
            } => {
                let bytes =
                    testing::envelope(NAMES[from], NAMES[to], precedence, seq, transport, sealed);
                let stream = wrong.unwrap_or(Lane::Precedence(transport));
                self.send(from, stream, Bytes::from(bytes));
            }
            Op::Delivered {
                from,
                to,
                precedence,
                upto,
            } => {
                let bytes = signed(Signed::Delivered(from, to, precedence, upto));
                self.send(from, Lane::Control, bytes);
            }
            Op::Escalation { from, to } => {
                self.send(from, Lane::Control, signed(Signed::Escalation(from, to)));
            }
            Op::Announcement { from, epoch } => {
                let bytes = signed(Signed::Announcement(from, epoch));
                self.send(from, Lane::Control, bytes);
            }
            Op::LinkTest { from, to } => {
                self.send(from, Lane::Control, signed(Signed::LinkTest(from, to)));
            }
            Op::Take(e, stream) => {
                if let Some(conn) = self.conns[e] {
                    if let Some(t) = self.router.poll_transmit(conn, stream) {
                        self.taken.push((conn, t));
                    }
                }
            }
            Op::Written(i) => {
                if !self.taken.is_empty() {
                    let (conn, t) = self.taken.remove(i % self.taken.len());
                    self.router.handle_written(conn, t);
                }
            }
            Op::Flush(e) => {
                if let Some(conn) = self.conns[e] {
                    for stream in Lane::ALL {
                        // A writer that already has a frame taken waits for it (as the shell's
                        // does); the router returns nothing more for control meanwhile.
                        for _ in 0..64 {
                            let Some(t) = self.router.poll_transmit(conn, stream) else {
                                break;
                            };
                            self.router.handle_written(conn, t);
                        }
                    }
                }
            }
            Op::Commit(i) => self.commit(i),
            Op::Advance(secs) => {
                self.now = self.now.plus(Duration::from_secs(secs));
                self.router.handle_timeout(self.now);
            }
        }
        self.collect_writes();
        Ok(())
    }

    /// Takes the writes the router issued into their class queues, and answers reads from what
    /// the store holds (at once: a store reader never waits for the writer).
    fn collect_writes(&mut self) {
        while let Some(output) = self.router.poll_output() {
            match output {
                Output::Persist { write, class, ops } => {
                    self.in_order.apply(&ops);
                    match class {
                        WriteClass::Urgent => self.urgent.push_back((write, ops)),
                        WriteClass::Bulk => self.bulk.push_back((write, ops)),
                    }
                }
                Output::Load {
                    destination,
                    lane,
                    order,
                } => {
                    let row = self.committed.envelopes.get(&order);
                    let bytes = row.map(|(_, _, bytes)| bytes.clone());
                    self.router.handle_loaded(&destination, lane, order, bytes);
                }
                _ => {}
            }
        }
    }

    /// One group commit as the store writer makes it: every urgent write, then `bulk` bulk
    /// writes (modulo those pending plus one), in one transaction, urgent first.
    fn commit(&mut self, bulk: usize) {
        let bulk = bulk % (self.bulk.len() + 1);
        let writes: Vec<Write> = self
            .urgent
            .drain(..)
            .chain(self.bulk.drain(..bulk))
            .collect();
        for (_, ops) in &writes {
            self.committed.apply(ops);
        }
        let ids: Vec<CommitId> = writes.iter().map(|(w, _)| *w).collect();
        self.router.handle_persisted_writes(&ids);
    }

    /// Commits until nothing is pending (a commit may release frames whose writing issues more).
    fn commit_all(&mut self) {
        while !self.urgent.is_empty() || !self.bulk.is_empty() {
            self.commit(self.bulk.len());
            self.collect_writes();
        }
    }
}

fn run(ops: &[Op]) -> Result<(), String> {
    let mut shell = Shell::new()?;
    for (step, op) in ops.iter().enumerate() {
        shell.apply(op)?;
        let drift = shell.router.counter_drift();
        if !drift.is_empty() {
            return Err(format!("after step {step} ({op:?}): {drift:#?}"));
        }
        for (e, conn) in shell.conns.iter().enumerate() {
            if let Some(conn) = conn {
                let backlog = shell.router.control_backlog(*conn);
                let queued = shell.router.queued_bytes(&id(NAMES[e]));
                if backlog > queued {
                    return Err(format!(
                        "after step {step}: {} control backlog {backlog} > queued {queued}",
                        NAMES[e]
                    ));
                }
            }
        }
    }
    shell.commit_all();
    if shell.committed != shell.in_order {
        return Err(format!(
            "committing urgent writes first changed what is stored:\n committed {:?}\n in issue order {:?}",
            shell.committed, shell.in_order
        ));
    }
    let drift = shell.router.counter_drift();
    if !drift.is_empty() {
        return Err(format!("after the last commit: {drift:#?}"));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_counter_equals_the_sum_over_what_is_queued_and_reordered_commits_store_the_same(
        ops in prop::collection::vec(op(), 1..60),
    ) {
        if let Err(e) = run(&ops) {
            return Err(TestCaseError::fail(e));
        }
    }
}
