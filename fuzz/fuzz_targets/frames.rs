//! Every byte string a client can send over the WebSocket (text → JSON frame, binary →
//! protobuf frame) and every HTTP event body: parsing never panics, and whatever parses
//! survives a round trip through both encodings unchanged.

#![no_main]

use agentwire_protocol::{ClientFrame, cloudevents};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = ClientFrame::from_protobuf(data) {
        round_trip(&frame);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(frame) = ClientFrame::from_json(text) {
            round_trip(&frame);
        }
        if let Ok(event) = cloudevents::from_json(text) {
            let again = cloudevents::from_json(&cloudevents::to_json(&event))
                .expect("a parsed event re-parses");
            assert_eq!(
                normalized(ClientFrame::Publish { event: Box::new(again) }),
                normalized(ClientFrame::Publish { event: Box::new(event) })
            );
        }
        let _ = cloudevents::batch_from_json(text);
    }
});

fn round_trip(frame: &ClientFrame) {
    let json = ClientFrame::from_json(&frame.to_json()).expect("its JSON re-parses");
    assert_eq!(normalized(json), normalized(frame.clone()));
    let pb = ClientFrame::from_protobuf(&frame.to_protobuf()).expect("its protobuf re-parses");
    assert_eq!(normalized(pb), normalized(frame.clone()));
}

/// Both encoders state CloudEvents' implied `datacontenttype` (JSON data defaults to
/// `application/json`) where the input may leave it out: compare with the default explicit.
fn normalized(frame: ClientFrame) -> ClientFrame {
    match frame {
        ClientFrame::Publish { mut event } => {
            event.content_type = event.effective_content_type().map(str::to_owned);
            ClientFrame::Publish { event }
        }
        ClientFrame::Ephemeral { mut event } => {
            event.content_type = event.effective_content_type().map(str::to_owned);
            ClientFrame::Ephemeral { event }
        }
        other => other,
    }
}
