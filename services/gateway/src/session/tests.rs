//! The session machine driven without sockets: every transition `docs/protocol.md` names
//! (the seam, lag → catch-up, epoch change, token expiry and refresh, ephemeral shed) as
//! inputs in, actions out.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentwire_protocol::{
    ClientFrame, CloseCode, ErrorCode, Event, EventType, Label, Offset, SessionKey, Start, Tenant,
};
use agentwire_valkey::{LiveAnnotation, LiveEphemeral, LiveMessage};

use crate::auth::{Claims, Principal};
use crate::error::ApiError;
use crate::fanout::Publication;
use crate::session::limits::RateSettings;
use crate::session::outbound::{Encoding, Outbound};
use crate::session::state::{Action, HistoryRead, SessionState, Settings};

const EPOCH: &str = "agent.events/8/3/0";

fn settings() -> Settings {
    Settings {
        max_subscriptions: 3,
        max_frame_bytes: 1024,
        idle_timeout: Duration::from_secs(45),
        rates: RateSettings {
            publishes_per_sec: 1000,
            publish_burst: 1000,
            bytes_per_sec: 1_000_000,
            bytes_burst: 1_000_000,
            max_strikes: 3,
        },
    }
}

fn key(s: &str) -> SessionKey {
    format!("t:a:{s}").parse().expect("key")
}

fn principal(subscribe: Option<&[&str]>, exp: u64) -> Principal {
    Principal::from_claims(Claims {
        tenant: "t".into(),
        exp,
        subscribe: subscribe.map(|p| p.iter().map(|s| (*s).to_owned()).collect()),
        publish: None,
        producers: None,
        enqueue: None,
        consume: None,
        sub: None,
    })
    .expect("claims")
}

fn in_an_hour() -> u64 {
    (SystemTime::now() + Duration::from_secs(3600))
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Every action the machine asks for now.
fn drain(machine: &mut SessionState) -> Vec<Action> {
    std::iter::from_fn(|| machine.next_action()).collect()
}

/// The frames among `actions`: live ones by offset, others as JSON text.
fn sent(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Send(Outbound::Stored { offset, .. }) => Some(format!("history {offset}")),
            Action::Send(Outbound::Shared(p)) => Some(format!("live {:?}", p.kind)),
            Action::Send(Outbound::Frame(frame)) => Some(frame.to_json()),
            Action::Send(Outbound::Ping) => Some("ping".into()),
            _ => None,
        })
        .collect()
}

fn live(session: &SessionKey, offset: u64) -> Arc<Publication> {
    Arc::new(Publication::event(LiveMessage {
        session: session.clone(),
        offset: Offset(offset),
        event_json: "{}".into(),
        meta: Default::default(),
    }))
}

fn page(offsets: &[u64], more: bool) -> HistoryRead {
    HistoryRead::Page {
        events: offsets.iter().map(|o| (Offset(*o), "{}".into())).collect(),
        more,
        next_after: None,
    }
}

fn message(machine: &mut SessionState, frame: ClientFrame) {
    machine.on_message(Encoding::Json, 10, Ok(frame));
}

/// A machine following `session` from `after` (a resume) with `latest` as its resume point.
fn following(session: &SessionKey, after: Option<u64>, latest: Option<u64>) -> SessionState {
    following_from(session, after.map(Offset).into(), latest)
}

/// A machine following `session` from `start` with `latest` as its resume point.
fn following_from(session: &SessionKey, start: Start, latest: Option<u64>) -> SessionState {
    let mut machine = SessionState::new(settings(), Principal::anyone());
    drain(&mut machine);
    let epoch = start.after().map(|_| EPOCH.to_owned());
    message(
        &mut machine,
        ClientFrame::Subscribe {
            session: session.clone(),
            start,
            epoch: epoch.clone(),
        },
    );
    assert!(matches!(
        drain(&mut machine)[..],
        [Action::ReadEpoch { .. }]
    ));
    machine.on_epoch(session.clone(), start, epoch, Ok(EPOCH.into()));
    assert!(matches!(drain(&mut machine)[..], [Action::Follow { .. }]));
    machine.on_followed(session.clone(), start, EPOCH.into(), Ok(latest.map(Offset)));
    machine
}

#[test]
fn the_seam_delivers_history_then_live_with_no_gap_and_no_duplicate() {
    let s = key("s");
    let mut machine = following(&s, Some(41), Some(45));
    let actions = drain(&mut machine);
    assert_eq!(
        sent(&actions),
        vec![format!(
            r#"{{"op":"subscribed","session":"{s}","offset":45,"epoch":"{EPOCH}"}}"#
        )]
    );
    assert!(matches!(&actions[1], Action::CatchUp(x) if *x == s));
    assert_eq!(machine.catch_up_from(&s), Some(Some(Offset(41))));
    // Live events that were already queued when the read was asked for are held back.
    machine.on_live(&live(&s, 44));
    assert!(drain(&mut machine).is_empty());
    machine.on_history(&s, page(&[42, 44, 45], false));
    machine.on_live(&live(&s, 45));
    machine.on_live(&live(&s, 46));
    assert_eq!(
        sent(&drain(&mut machine)),
        vec![
            "history 42",
            "history 44",
            "history 45",
            "live Event(Offset(46))"
        ]
    );
}

#[test]
fn a_subscription_from_earliest_reads_history_from_the_start_then_goes_live() {
    let s = key("s");
    let mut machine = following_from(&s, Start::Earliest, Some(45));
    let actions = drain(&mut machine);
    assert_eq!(
        sent(&actions),
        vec![format!(
            r#"{{"op":"subscribed","session":"{s}","offset":45,"epoch":"{EPOCH}"}}"#
        )]
    );
    assert!(matches!(&actions[1], Action::CatchUp(x) if *x == s));
    // No cursor: the read starts before the log's first offset.
    assert_eq!(machine.catch_up_from(&s), Some(None));
    machine.on_live(&live(&s, 46));
    assert!(drain(&mut machine).is_empty(), "live waits for history");
    machine.on_history(&s, page(&[0, 3, 45], true));
    let actions = drain(&mut machine);
    assert_eq!(sent(&actions), vec!["history 0", "history 3", "history 45"]);
    assert!(matches!(actions.last(), Some(Action::CatchUp(_))));
    assert_eq!(machine.catch_up_from(&s), Some(Some(Offset(45))));
    machine.on_history(&s, page(&[45, 46], false));
    machine.on_live(&live(&s, 46));
    machine.on_live(&live(&s, 47));
    assert_eq!(
        sent(&drain(&mut machine)),
        vec!["history 46", "live Event(Offset(47))"]
    );
}

#[test]
fn only_new_events_start_after_the_latest_one() {
    let s = key("s");
    let mut machine = following(&s, None, Some(9));
    assert!(
        !drain(&mut machine)
            .iter()
            .any(|a| matches!(a, Action::CatchUp(_)))
    );
    machine.on_live(&live(&s, 9));
    machine.on_live(&live(&s, 10));
    assert_eq!(sent(&drain(&mut machine)), vec!["live Event(Offset(10))"]);
}

#[test]
fn a_lagged_session_catches_up_page_by_page_then_goes_live() {
    let s = key("s");
    let mut machine = following(&s, None, Some(0));
    drain(&mut machine);
    machine.on_live(&live(&s, 1));
    machine.on_catch_up_signal(&s);
    machine.on_catch_up_signal(&s);
    let actions = drain(&mut machine);
    assert_eq!(sent(&actions), vec!["live Event(Offset(1))"]);
    assert_eq!(
        actions
            .iter()
            .filter(|a| matches!(a, Action::CatchUp(_)))
            .count(),
        1,
        "one read asked for, however many signals"
    );
    machine.on_history(&s, page(&[1, 2, 3], true));
    let actions = drain(&mut machine);
    assert_eq!(sent(&actions), vec!["history 2", "history 3"]);
    assert!(matches!(actions.last(), Some(Action::CatchUp(_))));
    machine.on_history(&s, page(&[4], false));
    machine.on_live(&live(&s, 4));
    machine.on_live(&live(&s, 5));
    assert_eq!(
        sent(&drain(&mut machine)),
        vec!["history 4", "live Event(Offset(5))"]
    );
}

#[test]
fn a_failed_catch_up_holds_live_events_back_until_the_retry_reads_them() {
    let s = key("s");
    let mut machine = following(&s, None, Some(0));
    drain(&mut machine);
    machine.on_catch_up_signal(&s);
    drain(&mut machine);
    machine.on_history(&s, HistoryRead::Unavailable);
    assert!(machine.has_waiting());
    machine.on_live(&live(&s, 2));
    assert!(
        drain(&mut machine).is_empty(),
        "held back: 1 may be missing"
    );
    machine.on_retry_tick();
    assert!(matches!(drain(&mut machine)[..], [Action::CatchUp(_)]));
    machine.on_history(&s, page(&[1, 2], false));
    assert_eq!(sent(&drain(&mut machine)), vec!["history 1", "history 2"]);
    assert!(!machine.has_waiting());
}

#[test]
fn retention_is_reported_then_the_read_goes_on_from_what_is_retained() {
    let s = key("s");
    let mut machine = following(&s, Some(3), Some(20));
    drain(&mut machine);
    let error = ApiError::new(ErrorCode::HistoryUnavailable, "gone").frame_for(&s);
    machine.on_history(
        &s,
        HistoryRead::Retention {
            error,
            first_retained: Offset(10),
        },
    );
    let actions = drain(&mut machine);
    assert!(sent(&actions)[0].contains("history_unavailable"));
    assert_eq!(machine.catch_up_from(&s), Some(Some(Offset(9))));
    machine.on_history(&s, page(&[10], false));
    assert_eq!(sent(&drain(&mut machine)), vec!["history 10"]);
}

#[test]
fn a_resume_from_another_epoch_is_refused() {
    let s = key("s");
    let mut machine = SessionState::new(settings(), Principal::anyone());
    drain(&mut machine);
    machine.on_epoch(
        s.clone(),
        Start::After(Offset(5)),
        Some("agent.events/4/0/0".into()),
        Ok(EPOCH.into()),
    );
    let frames = sent(&drain(&mut machine));
    assert_eq!(frames.len(), 1);
    assert!(frames[0].contains("epoch_changed"), "{}", frames[0]);
    // Nothing is held for it: the connection may subscribe again.
    message(
        &mut machine,
        ClientFrame::Subscribe {
            session: s,
            start: Start::New,
            epoch: None,
        },
    );
    assert!(matches!(
        drain(&mut machine)[..],
        [Action::ReadEpoch { .. }]
    ));
}

#[test]
fn subscriptions_are_limited_and_counted_once() {
    let mut machine = following(&key("a"), None, None);
    drain(&mut machine);
    let subscribe = |s: &str| ClientFrame::Subscribe {
        session: key(s),
        start: Start::New,
        epoch: None,
    };
    message(&mut machine, subscribe("a"));
    assert!(sent(&drain(&mut machine))[0].contains("already_subscribed"));
    message(
        &mut machine,
        ClientFrame::FollowLabel {
            tenant: Tenant::new("t").expect("tenant"),
            label: Label::new("billing").expect("label"),
        },
    );
    assert!(matches!(drain(&mut machine)[..], [Action::FollowLabel(_)]));
    message(&mut machine, subscribe("b"));
    drain(&mut machine);
    message(&mut machine, subscribe("c"));
    assert!(sent(&drain(&mut machine))[0].contains("too_many_subscriptions"));
    message(&mut machine, ClientFrame::Unsubscribe { session: key("a") });
    let actions = drain(&mut machine);
    assert!(matches!(&actions[0], Action::Unfollow(s) if *s == key("a")));
    message(&mut machine, ClientFrame::Unsubscribe { session: key("a") });
    assert!(sent(&drain(&mut machine))[0].contains("not_subscribed"));
}

#[test]
fn an_expired_token_closes_with_4001() {
    let mut machine = SessionState::new(settings(), principal(None, in_an_hour()));
    assert!(matches!(drain(&mut machine)[..], [Action::Expire(Some(_))]));
    machine.on_expired();
    match &drain(&mut machine)[..] {
        [Action::Close(reason)] => assert_eq!(reason.code, CloseCode::TokenExpired),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_refresh_moves_the_expiry_and_ends_follows_the_new_token_forbids() {
    let (a, b) = (key("a"), key("b"));
    let mut machine = SessionState::new(settings(), principal(None, in_an_hour()));
    for s in [&a, &b] {
        machine.on_followed(s.clone(), Start::New, EPOCH.into(), Ok(None));
    }
    drain(&mut machine);
    message(&mut machine, ClientFrame::Refresh { token: "t".into() });
    assert!(matches!(drain(&mut machine)[..], [Action::Verify(_)]));
    let later = in_an_hour() + 60;
    machine.on_refresh(Ok(principal(Some(&["a:a"]), later)));
    let actions = drain(&mut machine);
    assert!(matches!(actions[0], Action::Expire(Some(_))));
    let frames = sent(&actions);
    assert_eq!(frames[0], format!(r#"{{"op":"refreshed","exp":{later}}}"#));
    assert!(frames[1].contains("forbidden") && frames[1].contains("t:a:b"));
    assert!(
        actions
            .iter()
            .any(|x| matches!(x, Action::Unfollow(s) if *s == b))
    );
    machine.on_live(&live(&b, 1));
    machine.on_live(&live(&a, 1));
    assert_eq!(sent(&drain(&mut machine)), vec!["live Event(Offset(1))"]);

    // Another tenant's token is refused and changes nothing.
    let other = Principal::from_claims(Claims {
        tenant: "u".into(),
        exp: later,
        subscribe: None,
        publish: None,
        producers: None,
        enqueue: None,
        consume: None,
        sub: None,
    })
    .expect("claims");
    machine.on_refresh(Ok(other));
    let frames = sent(&drain(&mut machine));
    assert!(frames[0].contains("forbidden"), "{}", frames[0]);
}

#[test]
fn ephemerals_are_shed_while_catching_up_and_annotations_follow_their_event() {
    let s = key("s");
    let mut machine = following(&s, None, Some(0));
    drain(&mut machine);
    let ephemeral = Arc::new(Publication::ephemeral(LiveEphemeral {
        session: s.clone(),
        event_json: "{}".into(),
    }));
    let annotation = |offset| {
        Arc::new(Publication::annotation(LiveAnnotation {
            session: s.clone(),
            offset: Offset(offset),
            json: "{}".into(),
            meta: Default::default(),
        }))
    };
    machine.on_live(&ephemeral);
    machine.on_live(&live(&s, 1));
    machine.on_live(&annotation(1));
    machine.on_live(&annotation(2));
    assert_eq!(
        sent(&drain(&mut machine)),
        vec![
            "live Ephemeral",
            "live Event(Offset(1))",
            "live Annotation(Offset(1))"
        ]
    );
    machine.on_catch_up_signal(&s);
    drain(&mut machine);
    machine.on_history(&s, HistoryRead::Unavailable);
    machine.on_live(&ephemeral);
    machine.on_live(&annotation(1));
    assert!(drain(&mut machine).is_empty(), "shed while catching up");
}

#[test]
fn publishes_are_handed_over_and_a_message_over_the_limit_closes() {
    let mut machine = SessionState::new(settings(), principal(Some(&["a:*"]), in_an_hour()));
    drain(&mut machine);
    let mut event = Event::new(key("x"), EventType::new("agent.message").expect("type"));
    event.stamp(SystemTime::now());
    message(
        &mut machine,
        ClientFrame::Publish {
            event: Box::new(event.clone()),
        },
    );
    assert!(matches!(drain(&mut machine)[..], [Action::Publish { .. }]));
    // Too big: closed with 1009 whatever it holds.
    machine.on_message(Encoding::Json, 2048, Ok(ClientFrame::Ping));
    match &drain(&mut machine)[..] {
        [Action::Close(reason)] => assert_eq!(reason.code, CloseCode::TooBig),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn label_feeds_deliver_only_sessions_the_token_may_follow() {
    let mut machine = SessionState::new(settings(), principal(Some(&["a:ok"]), in_an_hour()));
    drain(&mut machine);
    let labelled = |s: &str| {
        Arc::new(Publication::labelled(LiveAnnotation {
            session: key(s),
            offset: Offset(1),
            json: "{}".into(),
            meta: Default::default(),
        }))
    };
    machine.on_live(&labelled("ok"));
    machine.on_live(&labelled("secret"));
    assert_eq!(sent(&drain(&mut machine)), vec!["live Labelled(Offset(1))"]);
}

#[test]
fn heartbeats_ping_then_drop_a_silent_client() {
    let mut machine = SessionState::new(settings(), Principal::anyone());
    drain(&mut machine);
    machine.on_heartbeat(Duration::from_secs(15));
    assert_eq!(sent(&drain(&mut machine)), vec!["ping"]);
    machine.on_heartbeat(Duration::from_secs(46));
    assert!(matches!(drain(&mut machine)[..], [Action::Drop]));
}
