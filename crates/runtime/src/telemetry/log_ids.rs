//! JSON log lines that name the trace and span they were written in (`trace_id`, `span_id`),
//! so a log line leads to its trace and a trace to its log lines.

use std::fmt;

use opentelemetry::trace::TraceContextExt as _;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Wraps a JSON event format and adds the current OpenTelemetry ids to each line written
/// inside a traced span (lines outside one are left as they are).
#[derive(Debug)]
pub struct WithTraceIds<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let cx = opentelemetry::Context::current();
        let span = cx.span();
        let ids = span.span_context();
        if !ids.is_valid() {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        splice_ids(
            &line,
            &ids.trace_id().to_string(),
            &ids.span_id().to_string(),
            &mut writer,
        )
    }
}

/// Writes the JSON object `line` (one line, `{…}` and a newline) with the two ids added as
/// its last members.
fn splice_ids(line: &str, trace_id: &str, span_id: &str, out: &mut impl fmt::Write) -> fmt::Result {
    match line.rfind('}') {
        Some(end) => {
            out.write_str(&line[..end])?;
            write!(out, r#","trace_id":"{trace_id}","span_id":"{span_id}"}}"#)?;
            out.write_str(&line[end + 1..])
        }
        None => out.write_str(line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ids_become_members_of_the_line() {
        let mut out = String::new();
        splice_ids(
            "{\"level\":\"INFO\",\"fields\":{\"message\":\"hi\"}}\n",
            "0af7651916cd43dd8448eb211c80319c",
            "b7ad6b7169203331",
            &mut out,
        )
        .expect("write");
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).expect("still JSON");
        assert_eq!(v["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(v["span_id"], "b7ad6b7169203331");
        assert_eq!(v["fields"]["message"], "hi");
        assert!(out.ends_with('\n'), "one line each");
    }

    /// A buffer the subscriber writes its lines into.
    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lines").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_inside_a_traced_span_name_it_and_lines_outside_do_not() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        use tracing_subscriber::prelude::*;

        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .event_format(WithTraceIds(tracing_subscriber::fmt::format().json()))
                    .with_writer(move || writer.clone()),
            )
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let expected = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside");
            let span = tracing::info_span!("work");
            let _entered = span.enter();
            tracing::info!("inside");
            let cx = span.context();
            let ids = cx.span().span_context().clone();
            (ids.trace_id().to_string(), ids.span_id().to_string())
        });
        let text = String::from_utf8(lines.0.lock().expect("lines").clone()).expect("utf-8");
        let parsed: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(parsed.len(), 2, "{text}");
        assert!(parsed[0].get("trace_id").is_none(), "{text}");
        assert_eq!(parsed[1]["trace_id"], expected.0.as_str(), "{text}");
        assert_eq!(parsed[1]["span_id"], expected.1.as_str(), "{text}");
    }
}
