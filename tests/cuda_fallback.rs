//! Built with `--features cuda` (see `make test`): asking for CUDA where this ONNX Runtime or
//! machine has none falls back to CPU with a warning, and inference still works.
#![cfg(feature = "cuda")]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use rulegate::{Classifier, ClassifierOptions, Device, Guard, Message, Policy};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn cuda_falls_back_to_cpu_with_a_warning() {
    let logs = Captured::default();
    let sink = logs.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt().with_writer(move || sink.clone()).with_ansi(false).finish(),
    );
    let options = ClassifierOptions {
        device: Device::Cuda { device_id: 0 },
        sessions: 1,
        intra_threads: 1,
        ..ClassifierOptions::default()
    };
    let classifier = Classifier::load(common::default_model(), &options).expect("loads even without CUDA");
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    if classifier.device() == Device::Cpu {
        assert!(text.contains("WARN") && text.contains("running on CPU"), "the fallback is announced: {text}");
    }
    let guard = Guard::new(Arc::new(Policy::from_file(common::default_policy()).unwrap()), classifier).unwrap();
    let v = guard
        .evaluate(&[Message::user("What is the boiling point of water?")], "100 degrees Celsius at sea level.", None)
        .await
        .unwrap();
    assert!(v.score.is_finite());
}
