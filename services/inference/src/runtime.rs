//! ONNX Runtime: loading the library, and sessions on the configured execution
//! providers, reporting which one really runs.

use std::path::{Path, PathBuf};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};

/// ONNX Runtime or a model could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "cannot load the ONNX Runtime library {path}: {reason} (install it with `just models`, or point SWITCHYARD_ORT_LIB at libonnxruntime.so.1.31.x)"
    )]
    Library { path: PathBuf, reason: String },
    #[error("cannot create the ONNX Runtime environment: {0}")]
    Environment(String),
    #[error("model file {path} is missing (build the models with `just models`)")]
    MissingFile { path: PathBuf },
    #[error("cannot load {path}: {reason}")]
    Session { path: PathBuf, reason: String },
    #[error("no execution provider of {tried:?} could run {path}")]
    NoProvider { path: PathBuf, tried: Vec<String> },
    #[error("unknown execution provider '{0}' (known: tensorrt, cuda, cpu)")]
    UnknownProvider(String),
}

/// Loads the ONNX Runtime library at `lib` and creates the process's environment.
/// A missing or incompatible library is an error here, never a panic later.
pub fn init(lib: &Path) -> Result<Environment, RuntimeError> {
    if !lib.is_file() {
        return Err(RuntimeError::Library {
            path: lib.to_path_buf(),
            reason: "no such file".into(),
        });
    }
    // ort panics on some load failures (e.g. a library without the API version it
    // needs); turn those into errors too.
    let loaded =
        std::panic::catch_unwind(|| ort::init_from(lib).map(|b| b.with_name("switchyard")));
    let builder = match loaded {
        Ok(Ok(builder)) => builder,
        Ok(Err(e)) => {
            return Err(RuntimeError::Library {
                path: lib.to_path_buf(),
                reason: e.to_string(),
            });
        }
        Err(_) => {
            return Err(RuntimeError::Library {
                path: lib.to_path_buf(),
                reason: "the library is not a compatible ONNX Runtime (API 31 or newer)".into(),
            });
        }
    };
    let env = builder
        .build()
        .map_err(|e| RuntimeError::Environment(e.to_string()))?;
    let isa = switchyard_blockops::kernel::Isa::best();
    if isa == switchyard_blockops::kernel::Isa::Portable {
        tracing::warn!(
            kernel = isa.name(),
            "this CPU has no AVX2: graphs with the switchyard.MatMulQ4_1 op (SmolLM2 as converted by default) run its portable code, several times slower than onnxruntime's own kernels; convert them with `--quant exact` for such hosts"
        );
    } else {
        tracing::info!(kernel = isa.name(), "MatMulQ4_1 custom op ready");
    }
    Ok(env)
}

/// Session settings shared by every model.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Execution providers in order of preference: `tensorrt`, `cuda`, `cpu`.
    pub providers: Vec<String>,
    pub trt_cache_dir: PathBuf,
    /// Intra-op threads (0: ONNX Runtime's default, one per core).
    pub threads: usize,
}

/// A loaded model and the execution provider it runs on.
pub struct Loaded {
    pub session: Session,
    /// `TensorrtExecutionProvider`, `CUDAExecutionProvider` or `CPUExecutionProvider`.
    pub provider: &'static str,
}

fn session_error(path: &Path, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Session {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn builder(
    env: &Environment,
    config: &SessionConfig,
    path: &Path,
) -> Result<SessionBuilder, RuntimeError> {
    // The builder's error type is not Send/Sync: map it to text right away.
    let mut b = Session::builder(env)
        .map_err(|e| session_error(path, e))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| session_error(path, e))?;
    if config.threads > 0 {
        b = b
            .with_intra_threads(config.threads)
            .map_err(|e| session_error(path, e))?;
    }
    // The project's custom ops (services/blockops), for graphs that use them.
    switchyard_blockops::register_on(&mut b).map_err(|e| session_error(path, e))?;
    Ok(b)
}

/// Loads `path` on the first of `config.providers` that works, logging each one that
/// does not; never falls back silently.
pub fn load(
    env: &Environment,
    config: &SessionConfig,
    path: &Path,
) -> Result<Loaded, RuntimeError> {
    if !path.is_file() {
        return Err(RuntimeError::MissingFile {
            path: path.to_path_buf(),
        });
    }
    for name in &config.providers {
        let name = name.trim().to_ascii_lowercase();
        let attempt = match name.as_str() {
            "cpu" => register_cpu(env, config, path),
            "cuda" => register_cuda(env, config, path),
            "tensorrt" | "trt" => register_tensorrt(env, config, path),
            _ => return Err(RuntimeError::UnknownProvider(name)),
        };
        match attempt {
            Ok(loaded) => {
                tracing::info!(
                    model = %path.display(),
                    execution_provider = loaded.provider,
                    "model loaded"
                );
                return Ok(loaded);
            }
            Err(Skip::Unavailable(reason)) => {
                tracing::warn!(execution_provider = %name, %reason, "execution provider unavailable; trying the next one");
            }
            Err(Skip::Fatal(e)) => return Err(e),
        }
    }
    Err(RuntimeError::NoProvider {
        path: path.to_path_buf(),
        tried: config.providers.clone(),
    })
}

enum Skip {
    /// This provider cannot run here; the next one may.
    Unavailable(String),
    /// The model itself cannot load.
    Fatal(RuntimeError),
}

fn register_cpu(env: &Environment, config: &SessionConfig, path: &Path) -> Result<Loaded, Skip> {
    let session = builder(env, config, path)
        .map_err(Skip::Fatal)?
        .commit_from_file(path)
        .map_err(|e| Skip::Fatal(session_error(path, e)))?;
    Ok(Loaded {
        session,
        provider: "CPUExecutionProvider",
    })
}

#[cfg(feature = "gpu")]
fn register_gpu(
    env: &Environment,
    config: &SessionConfig,
    path: &Path,
    ep: ort::ep::ExecutionProviderDispatch,
    provider: &'static str,
) -> Result<Loaded, Skip> {
    let mut b = builder(env, config, path).map_err(Skip::Fatal)?;
    // Register this one provider alone and insist on it: if it cannot run, we learn
    // it here instead of ONNX Runtime quietly placing the graph on the CPU.
    ep.register(&mut b)
        .map_err(|e| Skip::Unavailable(e.to_string()))?;
    let session = b
        .commit_from_file(path)
        .map_err(|e| Skip::Unavailable(e.to_string()))?;
    Ok(Loaded { session, provider })
}

#[cfg(feature = "gpu")]
fn register_cuda(env: &Environment, config: &SessionConfig, path: &Path) -> Result<Loaded, Skip> {
    let ep = ort::ep::CUDA::default().build().error_on_failure();
    register_gpu(env, config, path, ep, "CUDAExecutionProvider")
}

#[cfg(feature = "gpu")]
fn register_tensorrt(
    env: &Environment,
    config: &SessionConfig,
    path: &Path,
) -> Result<Loaded, Skip> {
    let cache = config.trt_cache_dir.display().to_string();
    if let Err(e) = std::fs::create_dir_all(&config.trt_cache_dir) {
        return Err(Skip::Unavailable(format!(
            "cannot create the TensorRT cache directory {cache}: {e}"
        )));
    }
    let ep = ort::ep::TensorRT::default()
        .with_engine_cache(true)
        .with_engine_cache_path(&cache)
        .with_timing_cache(true)
        .with_timing_cache_path(&cache)
        .build()
        .error_on_failure();
    register_gpu(env, config, path, ep, "TensorrtExecutionProvider")
}

#[cfg(not(feature = "gpu"))]
fn register_cuda(_: &Environment, _: &SessionConfig, _: &Path) -> Result<Loaded, Skip> {
    Err(Skip::Unavailable(
        "this build has no CUDA support (build with --features gpu)".into(),
    ))
}

#[cfg(not(feature = "gpu"))]
fn register_tensorrt(_: &Environment, _: &SessionConfig, _: &Path) -> Result<Loaded, Skip> {
    Err(Skip::Unavailable(
        "this build has no TensorRT support (build with --features gpu)".into(),
    ))
}
