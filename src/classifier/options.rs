//! How a model is loaded and run: the backend, the device, and how sessions and threads are
//! laid out over the cores.

use std::thread;

use super::RemoteOptions;

/// Where the model's graph runs.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Backend {
    /// In this process, with ONNX Runtime (`model.onnx` in the model directory).
    #[default]
    Local,
    /// On a shared inference server speaking the Open Inference Protocol (KServe v2);
    /// the model directory needs only `manifest.json` and `tokenizer.json`.
    Remote(RemoteOptions),
}

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// Run on the CPU.
    #[default]
    Cpu,
    /// Use CUDA if this ONNX Runtime and machine support it, else CPU with a warning
    /// (needs the `cuda` feature).
    Cuda {
        /// CUDA device ordinal (`cuda:N` on the command line).
        device_id: i32,
    },
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda { device_id: 0 }),
            other => match other.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(device_id)) => Ok(Device::Cuda { device_id }),
                _ => Err(format!("unknown device `{other}` (expected cpu, cuda or cuda:N)")),
            },
        }
    }
}

/// How a model is loaded and run. The default spreads the cores over sessions as
/// [`ClassifierOptions::layout`] says, with batches of up to 32 pairs.
#[derive(Debug, Clone)]
pub struct ClassifierOptions {
    /// Sessions (and worker threads) in the pool.
    pub sessions: usize,
    /// ONNX Runtime intra-op threads per session.
    pub intra_threads: usize,
    /// Most pairs in one ONNX call.
    pub max_batch: usize,
    /// Where to run: CUDA device 0 by default with the `cuda` feature, else CPU.
    pub device: Device,
    /// Most pairs waiting for a worker; a job that would go past it is refused with
    /// [`ClassifierError::Overloaded`](super::ClassifierError::Overloaded) (a job arriving at
    /// an empty queue is always taken). Bounds memory and the wait of every judged request
    /// under overload.
    pub max_queued_rows: usize,
    /// In-process ONNX Runtime, or a remote inference server. With a remote backend,
    /// `sessions` is the number of calls in flight at once and the ONNX settings do not apply.
    pub backend: Backend,
}

impl Default for ClassifierOptions {
    fn default() -> Self {
        let device = if cfg!(feature = "cuda") { Device::Cuda { device_id: 0 } } else { Device::Cpu };
        let (sessions, intra_threads) = ClassifierOptions::layout(device, cores(), None, None);
        ClassifierOptions {
            sessions,
            intra_threads,
            max_batch: 32,
            device,
            max_queued_rows: DEFAULT_MAX_QUEUED_ROWS,
            backend: Backend::Local,
        }
    }
}

/// Most sessions [`ClassifierOptions::layout`] starts by itself: each holds its own copy of
/// the weights (about 27 MiB of resident memory with the shipped model: 99 MiB for the
/// sidecar with one session, 125 with two, 181 with four).
pub const MAX_DEFAULT_SESSIONS: usize = 4;

/// CPU cores this process may use.
pub fn cores() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

impl ClassifierOptions {
    /// The default options on `device` (the default device when `None`), with sessions and
    /// threads laid out by [`ClassifierOptions::layout`] over this machine's cores.
    pub fn laid_out(device: Option<Device>, sessions: Option<usize>, threads: Option<usize>) -> Self {
        let defaults = ClassifierOptions::default();
        let device = device.unwrap_or(defaults.device);
        let (sessions, intra_threads) = ClassifierOptions::layout(device, cores(), sessions, threads);
        ClassifierOptions { sessions, intra_threads, device, ..defaults }
    }

    /// Sessions and intra-op threads per session for `cores` cores, filling in what the
    /// user left unset, so that together they use the cores without oversubscribing them.
    ///
    /// On a CPU the shipped (dynamically quantised) graph runs one row per call, and one
    /// short row uses a second thread poorly: rows of concurrent requests go faster on
    /// separate sessions. The default is one session per core, up to
    /// [`MAX_DEFAULT_SESSIONS`], each with `cores / sessions` threads (on 2 cores, 16
    /// concurrent guarded requests: 1.5x the throughput of one 2-thread session, measured in
    /// benches/README.md). On CUDA one session (the GPU runs it; threads only feed it).
    pub fn layout(device: Device, cores: usize, sessions: Option<usize>, threads: Option<usize>) -> (usize, usize) {
        let cores = cores.max(1);
        let per = |sessions: usize| (cores / sessions.max(1)).max(1);
        match (sessions, threads) {
            (Some(s), Some(t)) => (s, t),
            (Some(s), None) => (s, per(s)),
            (None, Some(t)) if device == Device::Cpu => ((cores / t.max(1)).clamp(1, MAX_DEFAULT_SESSIONS), t),
            (None, Some(t)) => (1, t),
            (None, None) if device == Device::Cpu => {
                let s = cores.min(MAX_DEFAULT_SESSIONS);
                (s, per(s))
            }
            (None, None) => (1, cores),
        }
    }
}

/// Default [`ClassifierOptions::max_queued_rows`]: about a second of work for a 2-core CPU
/// at 256-token pairs, far more on a GPU.
pub const DEFAULT_MAX_QUEUED_ROWS: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_layout_fills_the_cores_without_oversubscribing_them() {
        let cpu = |cores, s, t| ClassifierOptions::layout(Device::Cpu, cores, s, t);
        assert_eq!(cpu(1, None, None), (1, 1));
        assert_eq!(cpu(2, None, None), (2, 1));
        assert_eq!(cpu(16, None, None), (MAX_DEFAULT_SESSIONS, 16 / MAX_DEFAULT_SESSIONS));
        assert_eq!(cpu(6, None, None), (4, 1), "sessions x threads never passes the cores");
        assert_eq!(cpu(8, Some(1), None), (1, 8), "one session takes every core");
        assert_eq!(cpu(8, None, Some(2)), (4, 2));
        assert_eq!(cpu(2, None, Some(4)), (1, 4), "what the user sets is kept");
        assert_eq!(cpu(2, Some(3), Some(3)), (3, 3));
        assert_eq!(cpu(0, None, None), (1, 1));
        let cuda = Device::Cuda { device_id: 0 };
        assert_eq!(ClassifierOptions::layout(cuda, 8, None, None), (1, 8));
        for cores in 1..=64 {
            let (s, t) = cpu(cores, None, None);
            assert!(s >= 1 && t >= 1 && s * t <= cores, "{cores} cores: {s} x {t}");
        }
    }
}
