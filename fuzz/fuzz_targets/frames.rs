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
            assert_eq!(again, event);
        }
        let _ = cloudevents::batch_from_json(text);
    }
});

fn round_trip(frame: &ClientFrame) {
    let json = ClientFrame::from_json(&frame.to_json()).expect("its JSON re-parses");
    assert_eq!(&json, frame);
    let pb = ClientFrame::from_protobuf(&frame.to_protobuf()).expect("its protobuf re-parses");
    assert_eq!(&pb, frame);
}
