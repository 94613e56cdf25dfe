use super::*;
use crate::store::{Batch, Store};

const BAD_SIGNATURE: &str = "security: bad signature";

fn raised(severity: Severity, kind: &str, cause: &str, count: u64, at: u64) -> Raised {
    Raised {
        severity,
        kind: kind.into(),
        cause: cause.into(),
        message: None,
        count,
        at: Time(at),
    }
}

fn security(cause: &str, count: u64, at: u64) -> Raised {
    raised(Severity::Critical, BAD_SIGNATURE, cause, count, at)
}

fn refusal(cause: &str, at: u64) -> Raised {
    raised(
        Severity::Warning,
        "refused by relay: Overloaded",
        cause,
        1,
        at,
    )
}

fn summary(book: &AlarmBook) -> Vec<(u64, &str, &str, u64)> {
    book.all_entries()
        .into_iter()
        .map(|e| (e.id, e.kind.as_str(), e.cause.as_str(), e.count))
        .collect()
}

#[test]
fn repeats_of_one_kind_and_cause_are_one_entry_with_counts_added() {
    let mut book = AlarmBook::default();
    book.raise(security("a link test was refused", 1, 10));
    book.raise(security("a link test was refused", 63, 20));
    // Same kind, other cause: its own entry.
    book.raise(security("an envelope was refused", 1, 30));
    // Same cause, other kind: its own entry.
    book.raise(raised(
        Severity::Critical,
        "security: not for this endpoint",
        "a link test was refused",
        1,
        40,
    ));
    assert_eq!(book.len(), 3);
    let first = book.all_entries().into_iter().find(|e| e.id == 1).unwrap();
    assert_eq!(first.count, 64);
    assert_eq!((first.first, first.last), (Time(10), Time(20)));
    assert_eq!(first.cause, "a link test was refused");
    // A late report (an older `at`) does not move `last` back.
    book.raise(security("a link test was refused", 1, 15));
    let first = book.all_entries().into_iter().find(|e| e.id == 1).unwrap();
    assert_eq!((first.count, first.last), (65, Time(20)));
}

#[test]
fn open_entries_are_ordered_by_severity_then_most_recent() {
    let mut book = AlarmBook::default();
    book.raise(refusal("late refusal", 50)); // 1
    book.raise(security("old", 1, 10)); // 2
    book.raise(raised(Severity::Notice, "re-paired", "x", 1, 60)); // 3
    book.raise(security("new", 1, 40)); // 4
    book.raise(refusal("early refusal", 20)); // 5
    let ids: Vec<u64> = book.open_entries().iter().map(|e| e.id).collect();
    assert_eq!(ids, [4, 2, 1, 5, 3]);
    // Cleared entries are left out of the open list and come last in the full one.
    book.clear(ClearTarget::One(4), "alice", Time(70)).unwrap();
    let open: Vec<u64> = book.open_entries().iter().map(|e| e.id).collect();
    assert_eq!(open, [2, 1, 5, 3]);
    let all: Vec<u64> = book.all_entries().iter().map(|e| e.id).collect();
    assert_eq!(all, [2, 1, 5, 3, 4]);
}

#[test]
fn a_flood_of_lesser_alarms_never_pushes_out_a_security_alarm() {
    let mut book = AlarmBook::with_capacity(8);
    book.raise(security("the first cause: partner key mismatch", 1, 1));
    for i in 0..1000 {
        book.raise(refusal(&format!("refusal {i}"), 2 + i));
    }
    let entries = book.all_entries();
    assert!(entries.len() <= 9, "bounded: {}", entries.len());
    let kept = entries.iter().find(|e| e.kind == BAD_SIGNATURE).unwrap();
    assert_eq!(kept.cause, "the first cause: partner key mismatch");
    assert_eq!(kept.id, 1);
    // Seven refusals kept (the first seven: equal severity does not evict), the rest counted.
    let overflow = entries.iter().find(|e| e.kind == OVERFLOW_KIND).unwrap();
    assert_eq!(overflow.count, 1000 - 7);
    assert_eq!(overflow.severity, Severity::Warning);
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.kind.starts_with("refused"))
            .count(),
        7
    );
}

#[test]
fn a_higher_severity_evicts_the_lowest_oldest_and_cleared_entries_go_first() {
    let mut book = AlarmBook::with_capacity(3);
    book.raise(refusal("r1", 10)); // 1
    book.raise(raised(Severity::Notice, "re-paired", "n", 1, 20)); // 2
    book.raise(refusal("r2", 5)); // 3
    let writes = book.raise(security("s1", 1, 30)); // 4 evicts the notice
    assert!(writes.contains(&BookWrite::Remove(2)), "{writes:?}");
    let writes = book.raise(security("s2", 1, 31)); // 5 evicts the older refusal
    assert!(writes.contains(&BookWrite::Remove(3)), "{writes:?}");
    // A cleared entry goes before any uncleared one, even a lesser one.
    book.clear(ClearTarget::One(4), "alice", Time(32)).unwrap();
    let writes = book.raise(security("s3", 1, 33)); // 6
    assert!(writes.contains(&BookWrite::Remove(4)), "{writes:?}");
    // Full of criticals and one warning: another critical evicts the warning; then nothing.
    book.raise(security("s4", 1, 34));
    assert!(!summary(&book).iter().any(|e| e.1.starts_with("refused")));
    book.raise(security("s5", 1, 35));
    let overflow = book
        .all_entries()
        .into_iter()
        .find(|e| e.kind == OVERFLOW_KIND)
        .unwrap();
    assert_eq!((overflow.count, overflow.severity), (1, Severity::Critical));
    let causes: Vec<&str> = summary(&book).iter().map(|e| e.2).collect();
    assert!(
        causes.contains(&"s2") && causes.contains(&"s3") && causes.contains(&"s4"),
        "{causes:?}"
    );
    // Ids are never reused.
    let ids: Vec<u64> = book.all_entries().iter().map(|e| e.id).collect();
    assert!(ids.iter().all(|id| ![1, 2, 3, 4].contains(id)), "{ids:?}");
}

#[test]
fn clearing_and_a_repeat_re_opening() {
    let mut book = AlarmBook::default();
    book.raise(security("why", 5, 10));
    book.raise(refusal("busy", 11));
    assert_eq!(
        book.clear(ClearTarget::One(7), "alice", Time(12)),
        Err(ClearError::NoSuchAlarm(7))
    );
    assert_eq!(
        ClearError::NoSuchAlarm(7).to_string(),
        "no alarm 7",
        "the wording the control protocol promises"
    );
    let (cleared, writes) = book.clear(ClearTarget::One(1), "alice", Time(12)).unwrap();
    assert_eq!(cleared.len(), 1);
    assert_eq!(writes.len(), 1);
    assert_eq!(
        cleared[0].cleared,
        Some(Cleared {
            by: "alice".into(),
            at: Time(12)
        })
    );
    assert!(matches!(
        book.clear(ClearTarget::One(1), "bob", Time(13)),
        Err(ClearError::AlreadyCleared { id: 1, .. })
    ));
    assert_eq!(book.open_entries().len(), 1);
    // A repeat re-opens it under the same id, counting from the repeat.
    book.raise(security("why", 2, 20));
    let e = book.open_entries()[0].clone();
    assert_eq!((e.id, e.count, e.first, e.last), (1, 2, Time(20), Time(20)));
    assert_eq!(e.cleared, None);
    // `All` clears every uncleared entry.
    let (cleared, _) = book.clear(ClearTarget::All, "bob", Time(30)).unwrap();
    assert_eq!(cleared.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2]);
    assert!(book.open_entries().is_empty());
    let (none, _) = book.clear(ClearTarget::All, "bob", Time(31)).unwrap();
    assert!(none.is_empty());
}

#[test]
fn views_carry_the_contract_fields() {
    let mut book = AlarmBook::default();
    book.raise(Raised {
        message: Some("us:main:flash:1".into()),
        ..security("why", 3, 1_000_000)
    });
    book.clear(ClearTarget::One(1), "alice", Time(2_000_000))
        .unwrap();
    let v = book.all_entries()[0].view();
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["id"], 1);
    assert_eq!(json["severity"], "critical");
    assert_eq!(json["kind"], BAD_SIGNATURE);
    assert_eq!(json["cause"], "why");
    assert_eq!(json["message"], "us:main:flash:1");
    assert_eq!(json["count"], 3);
    assert_eq!(json["first"], "1970-01-01T00:00:01.000000Z");
    assert_eq!(json["cleared"]["by"], "alice");
    assert_eq!(json["cleared"]["at"], "1970-01-01T00:00:02.000000Z");
}

#[test]
fn the_book_survives_a_store_round_trip_and_ids_stay_unused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut store, _) = Store::open(dir.path()).unwrap();
        assert!(store.read_alarm_book().unwrap().is_empty());
        let mut book = AlarmBook::with_capacity(2);
        let mut writes = book.raise(security("kept", 4, 10)); // 1
        writes.extend(book.raise(refusal("evicted", 11))); // 2
        writes.extend(book.raise(security("newest", 1, 12))); // 3, evicts 2
        writes.extend(
            book.clear(ClearTarget::One(3), "alice", Time(13))
                .unwrap()
                .1,
        );
        writes.extend(book.raise(security("kept", 2, 14)));
        let batch = Batch {
            alarm_book: writes,
            ..Batch::default()
        };
        store.commit(&batch, Time(15)).unwrap();
        // Evict the newest (cleared) entry too: its id must still not come back.
        let mut more = book.raise(security("fourth", 1, 16)); // 4, evicts 3
        more.extend(book.raise(security("fifth", 1, 17)));
        store
            .commit(
                &Batch {
                    alarm_book: more,
                    ..Batch::default()
                },
                Time(18),
            )
            .unwrap();
    }
    let (store, _) = Store::open(dir.path()).unwrap();
    let mut book = store.read_alarm_book().unwrap();
    let entries: Vec<(u64, String, u64)> = book
        .all_entries()
        .iter()
        .map(|e| (e.id, e.cause.clone(), e.count))
        .collect();
    assert!(
        entries.contains(&(1, "kept".into(), 6)),
        "counts survive: {entries:?}"
    );
    assert!(entries.iter().all(|e| e.0 != 2 && e.0 != 3), "{entries:?}");
    let writes = book.raise(refusal("after restart", 20));
    let new_id = writes
        .iter()
        .find_map(|w| match w {
            BookWrite::Put { entry, .. } if entry.cause == "after restart" => Some(entry.id),
            _ => None,
        })
        .unwrap_or(0);
    // 1..=4 were handed out before, and 5 went to the overflow entry or "fifth".
    assert!(new_id > 5, "a fresh id after restart, got {new_id}");
}

#[test]
fn the_control_protocol_names_are_the_contract() {
    use crate::control::{Event, Request, RequestLine, ResponseLine};
    let line = RequestLine::parse(r#"{"tag":4,"cmd":"clear_alarm","id":3,"by":"alice"}"#).unwrap();
    assert!(matches!(
        line.request,
        Request::ClearAlarm { id: Some(3), all: false, ref by } if by == "alice"
    ));
    let line = RequestLine::parse(r#"{"tag":5,"cmd":"alarms","follow":true}"#).unwrap();
    assert!(matches!(
        line.request,
        Request::Alarms {
            follow: true,
            all: false
        }
    ));
    let mut book = AlarmBook::default();
    book.raise(security("why", 1, 1));
    let response = ResponseLine {
        tag: 5,
        event: Event::Alarm(book.open_entries()[0].view()),
    };
    let json = serde_json::to_value(&response).unwrap();
    assert_eq!(json["event"], "alarm");
    assert_eq!(json["tag"], 5);
    assert_eq!(json["id"], 1);
    assert!(json["cleared"].is_null());
    let back: ResponseLine = serde_json::from_value(json).unwrap();
    assert!(matches!(back.event, Event::Alarm(v) if v.cause == "why"));
}
