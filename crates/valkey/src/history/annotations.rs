//! Enrichment annotations of a session: announced once per source offset and enrichment
//! version (`lua/annotate.lua`), and the per-version marks that make re-enrichment idempotent,
//! which drills read and repair (`lua/marks.lua`).

use std::collections::BTreeMap;

use agentwire_protocol::{Offset, SessionKey};
use redis::Script;

use super::HistoryStore;
use crate::error::ValkeyError;
use crate::keys;

static ANNOTATE: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("../lua/annotate.lua")));
static MARKS: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("../lua/marks.lua")));

/// The version a session's marker written before versions existed reads as in
/// [`HistoryStore::annotation_marks`] (such a marker is converted on the next annotation).
pub const UNVERSIONED_MARK: &str = "";

/// One enrichment to announce (see [`HistoryStore::annotate`]).
#[derive(Clone, Copy, Debug)]
pub struct Annotation<'a> {
    pub session: &'a SessionKey,
    /// The annotated event's offset.
    pub offset: Offset,
    /// What produced the enrichment (`Enrichment::version`): replays are recognised per
    /// version, so a new model or label set annotates events again.
    pub version: &'a str,
    /// The version a session marker of the single-version format stands for: the
    /// enrichment's model (records of that time have no version and read as their model).
    pub unversioned_as: &'a str,
    /// The `{"op":"enriched",…}` frame.
    pub json: &'a str,
    /// Label feeds to announce it on as well.
    pub label_channels: &'a [String],
    /// Publish even if the event is not in the session's window (yet).
    pub force: bool,
    /// What the announcement carries besides the frame: `LiveMeta::encode`.
    pub meta: &'a str,
}

/// What [`HistoryStore::annotate`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Annotated {
    Published,
    /// This offset (or a later one) was annotated before with the same version: nothing
    /// published.
    Replay,
    /// The annotated event is not in the session's window yet: try again shortly.
    EventNotYetAnnounced,
}

impl HistoryStore {
    /// Announces an enrichment of the event at `offset` to the session's subscribers and to
    /// the label channels, once per offset and version (see `lua/annotate.lua`). Without
    /// `force` it waits for the event itself to be in the window, so subscribers see the
    /// event first.
    pub async fn annotate(&self, a: &Annotation<'_>) -> Result<Annotated, ValkeyError> {
        let mut invocation = ANNOTATE.key(keys::annotated(a.session));
        invocation
            .key(keys::history(a.session))
            .arg(a.offset.0)
            .arg(a.json)
            .arg(keys::channel(a.session))
            .arg(self.ttl_secs())
            .arg(if a.force { "1" } else { "0" })
            .arg(self.publish_verb())
            .arg(a.meta)
            .arg(a.version)
            .arg(a.unversioned_as);
        for channel in a.label_channels {
            invocation.arg(channel);
        }
        let outcome: i64 = invocation.invoke_async(&mut self.conn.clone()).await?;
        Ok(match outcome {
            1 => Annotated::Published,
            0 => Annotated::Replay,
            _ => Annotated::EventNotYetAnnounced,
        })
    }

    /// A session's annotation marks: per enrichment version, the highest source offset
    /// announced. A marker written before versions reads as [`UNVERSIONED_MARK`].
    pub async fn annotation_marks(
        &self,
        session: &SessionKey,
    ) -> Result<BTreeMap<String, Offset>, ValkeyError> {
        let flat: Vec<String> = MARKS
            .key(keys::annotated(session))
            .arg("get")
            .invoke_async(&mut self.conn.clone())
            .await?;
        let mut marks = BTreeMap::new();
        for pair in flat.chunks(2) {
            let [version, offset] = pair else {
                return Err(ValkeyError::Reply(format!("odd annotation marks {flat:?}")));
            };
            let offset = offset.parse().map_err(|_| {
                ValkeyError::Reply(format!("annotation mark {version:?} is {offset:?}"))
            })?;
            marks.insert(version.clone(), Offset(offset));
        }
        Ok(marks)
    }

    /// Sets a session's mark for `version` to exactly `offset` (lower or higher than before),
    /// renewing the marks' idle TTL. A marker of the single-version format is replaced.
    pub async fn set_annotation_mark(
        &self,
        session: &SessionKey,
        version: &str,
        offset: Offset,
    ) -> Result<(), ValkeyError> {
        let _: i64 = MARKS
            .key(keys::annotated(session))
            .arg("set")
            .arg(version)
            .arg(offset.0)
            .arg(self.ttl_secs())
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Removes a session's mark for `version` ([`UNVERSIONED_MARK`]: a marker of the
    /// single-version format), so that the next enrichment of that version is announced
    /// whatever its offset. `true` if there was one.
    pub async fn delete_annotation_mark(
        &self,
        session: &SessionKey,
        version: &str,
    ) -> Result<bool, ValkeyError> {
        let removed: i64 = MARKS
            .key(keys::annotated(session))
            .arg("del")
            .arg(version)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(removed > 0)
    }

    fn ttl_secs(&self) -> u64 {
        self.settings.idle_ttl.as_secs().max(1)
    }
}
