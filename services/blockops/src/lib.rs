//! `switchyard.MatMulQ4_1`: an ONNX Runtime custom operator that multiplies by a weight
//! kept as ggml Q4_1 blocks, reading each block's minimum inline.
//!
//! Why it exists: SmolLM2's GGUF stores its layers as Q4_1 (`d·q + m` per block of 32).
//! onnxruntime's `MatMulNBits` has no fast kernel for a real-valued per-block offset, so the
//! exact graph used to add the minimums as a second, fp32 matmul per linear — a quarter of
//! every decode step, and the gap to llama.cpp (`infra/models/README.md`). This op reads
//! `d`, `m` (half floats, as the GGUF has them) and the 4-bit values in one pass, with int8
//! activations like `MatMulNBits`' `accuracy_level` 4. The arithmetic is in [`kernel`].
//!
//! The op (domain `switchyard`, since version 1):
//!
//! | | name | type | shape |
//! |---|---|---|---|
//! | input 0 | A | float | [..., K] |
//! | input 1 | B | uint8 | [N, K/2]: per block of 32, byte i = q[i] \| q[i+16] << 4 |
//! | input 2 | scales | float16 | [N, K/32] |
//! | input 3 | mins | float16 | [N, K/32] |
//! | output 0 | Y | float | [..., N] |
//!
//! with integer attributes `K` and `N`. It runs on the CPU execution provider, on onnxruntime's
//! intra-op thread pool.
//!
//! Two ways in: `RegisterCustomOps`, the C entry point onnxruntime loads from this crate's
//! cdylib (Python: `SessionOptions.register_custom_ops_library(path)`), and [`register`], for
//! a Rust process that already has the `OrtApi` (the inference worker links this crate).

pub mod kernel;

use std::ffi::{CStr, CString, c_char, c_void};
use std::sync::OnceLock;

use ort_sys::{
    ONNXTensorElementDataType as T, OrtApi, OrtApiBase, OrtCustomOp, OrtCustomOpDomain,
    OrtCustomOpInputOutputCharacteristic as Io, OrtErrorCode, OrtKernelContext, OrtKernelInfo,
    OrtMemType, OrtSessionOptions, OrtStatus, OrtStatusPtr, OrtValue,
};

/// The custom-op domain the converter writes into the graph.
pub const DOMAIN: &CStr = c"switchyard";
/// The operator's name in that domain.
pub const OP_NAME: &CStr = c"MatMulQ4_1";

const INPUTS: [T; 4] = [
    T::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
    T::ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8,
    T::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
    T::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
];

/// Adds the `switchyard` domain to a session's options. `api` must be the `OrtApi` of the
/// onnxruntime that owns `options`, of API version 31 or newer.
///
/// # Safety
/// `options` and `api` must be valid for the duration of the call; `options` must not be in
/// use by another thread.
pub unsafe fn register(options: *mut OrtSessionOptions, api: *const OrtApi) -> *mut OrtStatus {
    // One domain per process, shared by every session (onnxruntime only reads it); it must
    // outlive them all, so it is never released.
    static DOMAIN_PTR: OnceLock<usize> = OnceLock::new();
    // SAFETY: the caller's contract.
    let api = unsafe { &*api };
    let domain = match DOMAIN_PTR.get() {
        Some(d) => *d as *mut OrtCustomOpDomain,
        None => {
            let mut d: *mut OrtCustomOpDomain = std::ptr::null_mut();
            // SAFETY: valid out-pointer; OP is 'static.
            unsafe {
                let s = (api.CreateCustomOpDomain)(DOMAIN.as_ptr(), &mut d);
                if !s.0.is_null() {
                    return s.0;
                }
                let s = (api.CustomOpDomain_Add)(d, &OP);
                if !s.0.is_null() {
                    return s.0;
                }
            }
            // A racing registration may have won; its domain is used, this one leaks (once).
            *DOMAIN_PTR.get_or_init(|| d as usize) as *mut OrtCustomOpDomain
        }
    };
    // SAFETY: both pointers valid (caller's contract; domain lives forever).
    unsafe { (api.AddCustomOpDomain)(options, domain).0 }
}

/// Registers the op on an `ort` session builder (for the inference worker, which has
/// onnxruntime loaded through `ort`). The message of onnxruntime's error on failure.
#[cfg(feature = "ort")]
pub fn register_on(builder: &mut ort::session::builder::SessionBuilder) -> Result<(), String> {
    use ort::AsPointer;
    let api = ort::api();
    // SAFETY: the builder's options are valid and exclusively ours (&mut); `api` is the
    // OrtApi of the onnxruntime that made them.
    let status = unsafe { register(builder.ptr().cast_mut(), api) };
    if status.is_null() {
        return Ok(());
    }
    // SAFETY: a status just returned to us; read, then released once.
    unsafe {
        let msg = CStr::from_ptr((api.GetErrorMessage)(status))
            .to_string_lossy()
            .into_owned();
        (api.ReleaseStatus)(status);
        Err(msg)
    }
}

/// The entry point onnxruntime calls when it loads this library
/// (`RegisterCustomOpsLibrary`, Python's `register_custom_ops_library`).
///
/// # Safety
/// Called by onnxruntime with its own valid pointers.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn RegisterCustomOps(
    options: *mut OrtSessionOptions,
    api_base: *const OrtApiBase,
) -> *mut OrtStatus {
    // SAFETY: onnxruntime passes its own OrtApiBase.
    let api = unsafe { ((*api_base).GetApi)(ort_sys::ORT_API_VERSION) };
    if api.is_null() {
        // Too old an onnxruntime to hand us its API, so not even an error status can be made;
        // the session then fails to load with "no kernel for switchyard.MatMulQ4_1".
        return std::ptr::null_mut();
    }
    // SAFETY: valid pointers from onnxruntime.
    unsafe { register(options, api) }
}

static OP: OrtCustomOp = OrtCustomOp {
    version: ort_sys::ORT_API_VERSION,
    CreateKernel: None,
    GetName: Some(op_name),
    GetExecutionProviderType: Some(op_provider),
    GetInputType: Some(op_input_type),
    GetInputTypeCount: Some(op_input_count),
    GetOutputType: Some(op_output_type),
    GetOutputTypeCount: Some(op_output_count),
    KernelCompute: None,
    KernelDestroy: Some(kernel_destroy),
    GetInputCharacteristic: Some(op_required),
    GetOutputCharacteristic: Some(op_required),
    GetInputMemoryType: Some(op_memory_type),
    GetVariadicInputMinArity: Some(op_one),
    GetVariadicInputHomogeneity: Some(op_one),
    GetVariadicOutputMinArity: Some(op_one),
    GetVariadicOutputHomogeneity: Some(op_one),
    CreateKernelV2: Some(kernel_create),
    KernelComputeV2: Some(kernel_compute),
    InferOutputShapeFn: None,
    GetStartVersion: Some(op_one),
    GetEndVersion: Some(op_end_version),
    GetMayInplace: None,
    ReleaseMayInplace: None,
    GetAliasMap: None,
    ReleaseAliasMap: None,
};

unsafe extern "system" fn op_name(_: *const OrtCustomOp) -> *const c_char {
    OP_NAME.as_ptr()
}
unsafe extern "system" fn op_provider(_: *const OrtCustomOp) -> *const c_char {
    c"CPUExecutionProvider".as_ptr()
}
unsafe extern "system" fn op_input_type(_: *const OrtCustomOp, i: usize) -> T {
    INPUTS
        .get(i)
        .copied()
        .unwrap_or(T::ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED)
}
unsafe extern "system" fn op_input_count(_: *const OrtCustomOp) -> usize {
    INPUTS.len()
}
unsafe extern "system" fn op_output_type(_: *const OrtCustomOp, _: usize) -> T {
    T::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
}
unsafe extern "system" fn op_output_count(_: *const OrtCustomOp) -> usize {
    1
}
unsafe extern "system" fn op_required(_: *const OrtCustomOp, _: usize) -> Io {
    Io::INPUT_OUTPUT_REQUIRED
}
unsafe extern "system" fn op_memory_type(_: *const OrtCustomOp, _: usize) -> OrtMemType {
    OrtMemType::OrtMemTypeDefault
}
unsafe extern "system" fn op_one(_: *const OrtCustomOp) -> i32 {
    1
}
unsafe extern "system" fn op_end_version(_: *const OrtCustomOp) -> i32 {
    i32::MAX
}

/// One node's kernel: its attributes and the API it was created with.
struct Kernel {
    api: &'static OrtApi,
    k: usize,
    n: usize,
}

/// An error status, or null for success.
fn status(api: &OrtApi, code: OrtErrorCode, msg: &str) -> OrtStatusPtr {
    let msg = CString::new(format!("switchyard.MatMulQ4_1: {msg}")).unwrap_or_default();
    // SAFETY: msg is a valid C string; onnxruntime copies it.
    unsafe { (api.CreateStatus)(code, msg.as_ptr()) }
}

/// Turns an onnxruntime status into `Err` for `?`.
fn check(s: OrtStatusPtr) -> Result<(), OrtStatusPtr> {
    if s.0.is_null() { Ok(()) } else { Err(s) }
}

unsafe extern "system" fn kernel_create(
    _: *const OrtCustomOp,
    api: *const OrtApi,
    info: *const OrtKernelInfo,
    out: *mut *mut c_void,
) -> OrtStatusPtr {
    // SAFETY: onnxruntime's API lives as long as the process.
    let api: &'static OrtApi = unsafe { &*api };
    let attr = |name: &CStr| -> Result<usize, OrtStatusPtr> {
        let mut v = 0i64;
        // SAFETY: valid info and out-pointer.
        check(unsafe { (api.KernelInfoGetAttribute_int64)(info, name.as_ptr(), &mut v) })?;
        usize::try_from(v).map_err(|_| {
            status(
                api,
                OrtErrorCode::ORT_INVALID_ARGUMENT,
                &format!("attribute {name:?} = {v}"),
            )
        })
    };
    let made = (|| {
        let (k, n) = (attr(c"K")?, attr(c"N")?);
        if k == 0 || !k.is_multiple_of(kernel::QK) || n == 0 {
            return Err(status(
                api,
                OrtErrorCode::ORT_INVALID_ARGUMENT,
                &format!(
                    "K = {k} must be a positive multiple of {}, N = {n} positive",
                    kernel::QK
                ),
            ));
        }
        Ok(Kernel { api, k, n })
    })();
    match made {
        Ok(kernel) => {
            // SAFETY: valid out-pointer; freed in kernel_destroy.
            unsafe { *out = Box::into_raw(Box::new(kernel)).cast() };
            OrtStatusPtr::default()
        }
        Err(s) => s,
    }
}

unsafe extern "system" fn kernel_destroy(kernel: *mut c_void) {
    if !kernel.is_null() {
        // SAFETY: made by Box::into_raw in kernel_create, destroyed once.
        drop(unsafe { Box::from_raw(kernel.cast::<Kernel>()) });
    }
}

unsafe extern "system" fn kernel_compute(
    kernel: *mut c_void,
    ctx: *mut OrtKernelContext,
) -> OrtStatusPtr {
    // SAFETY: our own kernel, alive while onnxruntime runs it.
    let kernel = unsafe { &*kernel.cast::<Kernel>() };
    let api = kernel.api;
    match std::panic::catch_unwind(|| compute(kernel, ctx)) {
        Ok(Ok(())) => OrtStatusPtr::default(),
        Ok(Err(s)) => s,
        Err(_) => status(api, OrtErrorCode::ORT_FAIL, "internal error (panic)"),
    }
}

/// An input tensor: its dims and data.
struct Input {
    dims: Vec<i64>,
    data: *const c_void,
    len: usize,
}

fn input(api: &OrtApi, ctx: *mut OrtKernelContext, i: usize) -> Result<Input, OrtStatusPtr> {
    let mut value: *const OrtValue = std::ptr::null();
    // SAFETY: valid context and out-pointers throughout; the info is released before return.
    unsafe {
        check((api.KernelContext_GetInput)(ctx, i, &mut value))?;
        if value.is_null() {
            return Err(status(
                api,
                OrtErrorCode::ORT_INVALID_ARGUMENT,
                &format!("input {i} missing"),
            ));
        }
        let mut info = std::ptr::null_mut();
        check((api.GetTensorTypeAndShape)(value, &mut info))?;
        let mut n = 0usize;
        let mut len = 0usize;
        let dims = check((api.GetDimensionsCount)(info, &mut n))
            .and_then(|_| {
                let mut dims = vec![0i64; n];
                check((api.GetDimensions)(info, dims.as_mut_ptr(), n)).map(|_| dims)
            })
            .and_then(|dims| check((api.GetTensorShapeElementCount)(info, &mut len)).map(|_| dims));
        (api.ReleaseTensorTypeAndShapeInfo)(info);
        let dims = dims?;
        let mut data = std::ptr::null();
        check((api.GetTensorData)(value, &mut data))?;
        if data.is_null() && len > 0 {
            return Err(status(
                api,
                OrtErrorCode::ORT_FAIL,
                &format!("input {i} has no data"),
            ));
        }
        Ok(Input { dims, data, len })
    }
}

impl Input {
    /// The data as a slice of `U` (the element type the op declares for this input).
    ///
    /// # Safety
    /// `U` must be the tensor's element type (onnxruntime checks the graph's types against
    /// `GetInputType` before running the node).
    unsafe fn slice<'a, U>(&self) -> &'a [U] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: per the contract, `len` elements of U at `data`, alive for the call.
        unsafe { std::slice::from_raw_parts(self.data.cast::<U>(), self.len) }
    }
}

fn compute(kernel: &Kernel, ctx: *mut OrtKernelContext) -> Result<(), OrtStatusPtr> {
    let api = kernel.api;
    let bad = |msg: String| status(api, OrtErrorCode::ORT_INVALID_ARGUMENT, &msg);
    let a = input(api, ctx, 0)?;
    let (qs, d, m) = (
        input(api, ctx, 1)?,
        input(api, ctx, 2)?,
        input(api, ctx, 3)?,
    );
    if a.dims.last().copied() != Some(kernel.k as i64) {
        return Err(bad(format!(
            "A has shape {:?}, its last dimension must be K = {}",
            a.dims, kernel.k
        )));
    }
    // SAFETY: element types as declared in INPUTS (float16 read as its u16 bits).
    let (x, qs, d, m) = unsafe {
        (
            a.slice::<f32>(),
            qs.slice::<u8>(),
            d.slice::<u16>(),
            m.slice::<u16>(),
        )
    };
    let weights = kernel::Weights::new(kernel.k, kernel.n, qs, d, m).map_err(|e| bad(e.0))?;
    let mut dims = a.dims.clone();
    if let Some(last) = dims.last_mut() {
        *last = kernel.n as i64;
    }
    let mut y: *mut OrtValue = std::ptr::null_mut();
    // SAFETY: valid context, dims and out-pointer.
    check(unsafe { (api.KernelContext_GetOutput)(ctx, 0, dims.as_ptr(), dims.len(), &mut y) })?;
    let rows = x.len() / kernel.k;
    if rows == 0 {
        return Ok(());
    }
    let mut out_ptr: *mut c_void = std::ptr::null_mut();
    // SAFETY: y is the output just made.
    check(unsafe { (api.GetTensorMutableData)(y, &mut out_ptr) })?;
    // SAFETY: onnxruntime allocated rows·N floats for the shape given above.
    let out = unsafe { std::slice::from_raw_parts_mut(out_ptr.cast::<f32>(), rows * kernel.n) };
    // Rows are quantized on the thread pool too when there are enough of them (prefill).
    let failed = std::cell::Cell::new(std::ptr::null_mut::<OrtStatus>());
    let par: kernel::ParFor<'_> = &|n, f| {
        if n < PARALLEL_ROWS {
            (0..n).for_each(f);
        } else if let Err(s) = par_for(api, ctx, n, f) {
            failed.set(s.0);
        }
    };
    let acts = kernel::Activations::quantize_with(x, kernel.k, par).map_err(|e| bad(e.0))?;
    if !failed.get().is_null() {
        return Err(OrtStatusPtr(failed.get()));
    }
    let plan = kernel::Plan::new(weights, &acts, out).map_err(|e| bad(e.0))?;
    match plan.chunks() {
        1 => {
            plan.run();
            Ok(())
        }
        chunks => par_for(api, ctx, chunks, &|i| plan.run_chunk(i)),
    }
}

/// Rows below which quantizing the activations stays on the calling thread.
const PARALLEL_ROWS: usize = 8;

/// `f(i)` for i in 0..n on onnxruntime's intra-op thread pool; returns when all are done.
fn par_for(
    api: &OrtApi,
    ctx: *mut OrtKernelContext,
    n: usize,
    f: &(dyn Fn(usize) + Sync),
) -> Result<(), OrtStatusPtr> {
    unsafe extern "C" fn work(f: *mut c_void, i: usize) {
        // SAFETY: `f` points at the reference below, alive until ParallelFor returns. A panic
        // here would abort the process; the kernel's work items have none (every length they
        // rely on was validated before).
        unsafe { (*f.cast::<&(dyn Fn(usize) + Sync)>())(i) }
    }
    let f: &(dyn Fn(usize) + Sync) = f;
    // SAFETY: ParallelFor blocks until every work item has run.
    check(unsafe {
        (api.KernelContext_ParallelFor)(
            ctx,
            work,
            n,
            0,
            (&f as *const &(dyn Fn(usize) + Sync)).cast_mut().cast(),
        )
    })
}
