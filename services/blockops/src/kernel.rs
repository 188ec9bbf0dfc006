//! The arithmetic of `MatMulQ4_1`, without ONNX Runtime.
//!
//! A weight row is ggml Q4_1: blocks of [`QK`] inputs, each `d·q + m` with `q` in 0..15 and
//! `d`, `m` half floats. The activations are quantized per block to int8 as llama.cpp's Q8_1
//! and MLAS' `CompInt8` do (`x ≈ dx·x8`, `dx = max|x| / 127`), keeping each block's exact
//! float sum `sx`. Then, per output,
//!
//! ```text
//! w = d·q + m = d·(q − 8) + (m + 8d)
//! y[r, n] = Σ_b  d[n,b]·dx[r,b]·(Σ_i (q[n,b,i] − 8)·x8[r,b,i])  +  (m[n,b] + 8·d[n,b])·sx[r,b]
//!         = Σ_b  d·dx·(Σ_i q·x8)  +  m·sx  +  d·cx[r,b],   cx = 8·(sx − dx·Σ_i x8)
//! ```
//!
//! which is exactly the arithmetic of the graph this op replaces: MatMulNBits'
//! `accuracy_level` 4 on the centred nibbles `q − 8`, plus the block's constant part times
//! the exact block sum. (Multiplying the uncentred `q` by the int8 activations instead
//! weights their rounding errors by 0..15 rather than −8..7: measured, KL to the fp32 graph
//! 4× larger.) `cx` depends on the activations only, so it is computed once per block.
//!
//! Two implementations: AVX-512 VNNI (four blocks per instruction, chosen at run time) and
//! portable scalar code, which the tests hold the SIMD path to.

/// Inputs per block.
pub const QK: usize = 32;
/// Blocks per SIMD step; the activation layout groups blocks by this.
const GROUP: usize = 4;
/// Bytes of int8 activations per group: low halves of 4 blocks, then high halves.
const GROUP_BYTES: usize = GROUP * QK;
/// Output columns per parallel work item.
pub const CHUNK: usize = 32;

/// One Q4_1 weight matrix [n, k], borrowed from the graph's initializers.
#[derive(Clone, Copy)]
pub struct Weights<'a> {
    pub k: usize,
    pub n: usize,
    /// [n, k/2]: per block 16 bytes, byte i = q[i] | q[i + 16] << 4 (ggml's order).
    pub qs: &'a [u8],
    /// [n, k/32] scales, IEEE half bits.
    pub d: &'a [u16],
    /// [n, k/32] block minimums, IEEE half bits.
    pub m: &'a [u16],
}

/// Why a set of inputs cannot be multiplied.
#[derive(Debug, PartialEq, Eq)]
pub struct ShapeError(pub String);

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'a> Weights<'a> {
    pub fn new(
        k: usize,
        n: usize,
        qs: &'a [u8],
        d: &'a [u16],
        m: &'a [u16],
    ) -> Result<Self, ShapeError> {
        if k == 0 || !k.is_multiple_of(QK) {
            return Err(ShapeError(format!(
                "K = {k} is not a positive multiple of {QK}"
            )));
        }
        let blocks = n * (k / QK);
        if qs.len() != n * k / 2 {
            return Err(ShapeError(format!(
                "quantized weights hold {} bytes, N·K/2 = {}",
                qs.len(),
                n * k / 2
            )));
        }
        if d.len() != blocks || m.len() != blocks {
            return Err(ShapeError(format!(
                "scales/minimums hold {}/{} values, N·K/32 = {blocks}",
                d.len(),
                m.len()
            )));
        }
        Ok(Self { k, n, qs, d, m })
    }

    fn blocks(&self) -> usize {
        self.k / QK
    }
}

/// Activations [rows, k] quantized per block, in the layout the kernels read.
pub struct Activations {
    rows: usize,
    blocks: usize,
    /// Blocks rounded up to whole groups.
    padded: usize,
    /// [rows, padded/4, 128]: per group the first 16 inputs of its 4 blocks, then the last 16.
    x8: Vec<i8>,
    /// [rows, padded/4, 16]: each block's scale (0 in padding) repeated 4 times, the SIMD lanes' layout
    /// (lanes 4j..4j+3 of a group's partial sums belong to its block j).
    dx16: Vec<f32>,
    /// [rows, padded] exact block sums (0 in padding).
    sx: Vec<f32>,
    /// [rows, padded] 8·(sx − dx·Σ x8): what centring the nibbles adds per unit of `d`.
    cx: Vec<f32>,
}

impl Activations {
    /// `x` is [rows, k] row-major.
    pub fn quantize(x: &[f32], k: usize) -> Result<Self, ShapeError> {
        Self::quantize_with(x, k, &|rows, f| (0..rows).for_each(f))
    }

    /// As [`quantize`](Self::quantize), with the rows handed to `par`, a parallel for:
    /// `par(n, f)` must call `f(i)` once for every i in 0..n (from any threads) and return
    /// when all have returned.
    pub fn quantize_with(x: &[f32], k: usize, par: ParFor<'_>) -> Result<Self, ShapeError> {
        if k == 0 || !k.is_multiple_of(QK) || !x.len().is_multiple_of(k) {
            return Err(ShapeError(format!(
                "{} inputs are not rows of K = {k} (a multiple of {QK})",
                x.len()
            )));
        }
        let rows = x.len() / k;
        let blocks = k / QK;
        let padded = blocks.div_ceil(GROUP) * GROUP;
        let mut a = Self {
            rows,
            blocks,
            padded,
            x8: vec![0; rows * padded * QK],
            dx16: vec![0.0; rows * padded * 4],
            sx: vec![0.0; rows * padded],
            cx: vec![0.0; rows * padded],
        };
        let out = RowsMut {
            x8: a.x8.as_mut_ptr(),
            dx16: a.dx16.as_mut_ptr(),
            sx: a.sx.as_mut_ptr(),
            cx: a.cx.as_mut_ptr(),
            padded,
        };
        let isa = Isa::best();
        par(rows, &|r| {
            if r >= rows {
                return;
            }
            // SAFETY: row r of each buffer is its own disjoint range (r < rows); `a` outlives
            // `par`, which returns only when every row is done.
            let row = unsafe { out.row(r) };
            quantize_row(&x[r * k..][..k], row, isa);
        });
        Ok(a)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The scale of block `at` = row·padded + block (dx16 holds each one four times).
    fn scale(&self, at: usize) -> f32 {
        self.dx16[at * 4]
    }
}

/// A parallel for: `par(n, f)` calls `f(i)` for every i in 0..n and returns when all have.
pub type ParFor<'a> = &'a dyn Fn(usize, &(dyn Fn(usize) + Sync));

/// The activation buffers, for handing out one row's slices per work item.
struct RowsMut {
    x8: *mut i8,
    dx16: *mut f32,
    sx: *mut f32,
    cx: *mut f32,
    padded: usize,
}

// SAFETY: only used to give distinct rows to distinct threads (Activations::quantize_with).
unsafe impl Sync for RowsMut {}

/// One row's share of the activation buffers.
struct Row<'a> {
    x8: &'a mut [i8],
    dx16: &'a mut [f32],
    sx: &'a mut [f32],
    cx: &'a mut [f32],
}

impl RowsMut {
    /// # Safety
    /// `r` below the row count the buffers were made for, and no other live `Row` for `r`.
    unsafe fn row<'a>(&self, r: usize) -> Row<'a> {
        let p = self.padded;
        // SAFETY: the caller's contract; each buffer holds rows·(its row length) elements.
        unsafe {
            Row {
                x8: std::slice::from_raw_parts_mut(self.x8.add(r * p * QK), p * QK),
                dx16: std::slice::from_raw_parts_mut(self.dx16.add(r * p * 4), p * 4),
                sx: std::slice::from_raw_parts_mut(self.sx.add(r * p), p),
                cx: std::slice::from_raw_parts_mut(self.cx.add(r * p), p),
            }
        }
    }
}

fn quantize_row(x: &[f32], out: Row<'_>, isa: Isa) {
    for (b, block) in x.chunks_exact(QK).enumerate() {
        let at = (b / GROUP) * GROUP_BYTES + (b % GROUP) * (QK / 2);
        let (d, sx, isum) = quantize_block_on(block, &mut out.x8[at..], isa);
        out.dx16[b * 4..][..4].fill(d);
        out.sx[b] = sx;
        out.cx[b] = 8.0 * (sx - d * isum as f32);
    }
}

fn quantize_block_on(block: &[f32], x8: &mut [i8], isa: Isa) -> (f32, f32, i32) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512Vnni if x8.len() >= GROUP_BYTES / 2 + QK / 2 => {
            // SAFETY: the features were checked (Isa::best); 80 bytes checked just above.
            return unsafe { avx512::quantize_block(block, x8.as_mut_ptr()) };
        }
        // SAFETY: the features were checked (Isa::best).
        Isa::Avx2 => return unsafe { avx2::quantize_block(block, x8) },
        _ => {}
    }
    let _ = isa;
    quantize_block(block, x8)
}

#[inline(always)]
/// One block to int8 (rounding half to even, as the SIMD path's conversion does): writes its
/// first 16 values at x8[0..16] and the last 16 at x8[64..80]; returns (scale, exact sum,
/// sum of the int8 values).
fn quantize_block(block: &[f32], x8: &mut [i8]) -> (f32, f32, i32) {
    let amax = block.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut isum = 0i32;
    for (i, v) in block.iter().enumerate() {
        let pos = if i < QK / 2 {
            i
        } else {
            GROUP_BYTES / 2 + i - QK / 2
        };
        let q = (v * id).round_ties_even().clamp(-127.0, 127.0) as i8;
        x8[pos] = q;
        isum += q as i32;
    }
    (d, block.iter().sum(), isum)
}

/// IEEE 754 half → single, exactly (subnormals, infinities and NaN included).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // subnormal: man · 2^-24, exact in f32
            let v = man as f32 * f32::from_bits(0x3380_0000); // 2^-24
            return if sign != 0 { -v } else { v };
        }
        (0x1f, _) => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// One multiplication: `out` [rows, n] = activations · weightsᵀ, split into work items of
/// [`CHUNK`] output columns that may run on different threads.
pub struct Plan<'a> {
    w: Weights<'a>,
    a: &'a Activations,
    out: *mut f32,
    isa: Isa,
}

// SAFETY: work items write disjoint columns of `out` (see `run_chunk`); everything else is
// read-only.
unsafe impl Send for Plan<'_> {}
unsafe impl Sync for Plan<'_> {}

impl<'a> Plan<'a> {
    pub fn new(w: Weights<'a>, a: &'a Activations, out: &'a mut [f32]) -> Result<Self, ShapeError> {
        if a.blocks != w.blocks() {
            return Err(ShapeError(format!(
                "activations have K = {}, weights K = {}",
                a.blocks * QK,
                w.k
            )));
        }
        if out.len() != a.rows * w.n {
            return Err(ShapeError(format!(
                "output holds {}, rows·N = {}",
                out.len(),
                a.rows * w.n
            )));
        }
        Ok(Self {
            w,
            a,
            out: out.as_mut_ptr(),
            isa: Isa::best(),
        })
    }

    /// The same plan on another instruction set (tests compare them); `None` when this CPU
    /// lacks it.
    pub fn on(mut self, isa: Isa) -> Option<Self> {
        isa.available().then(|| {
            self.isa = isa;
            self
        })
    }

    pub fn chunks(&self) -> usize {
        self.w.n.div_ceil(CHUNK)
    }

    /// Computes output columns [i·CHUNK, (i+1)·CHUNK) for every row. Work items with
    /// different `i` touch disjoint memory, so they may run concurrently.
    pub fn run_chunk(&self, i: usize) {
        let cols = (i * CHUNK).min(self.w.n)..((i + 1) * CHUNK).min(self.w.n);
        match self.isa {
            // SAFETY (both): `isa` is only ever set to one that `available()` confirmed, and
            // `new` checked every length the kernels' pointer arithmetic relies on.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => unsafe { avx512::columns(self, cols) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::columns(self, cols) },
            _ => self.columns_portable(cols),
        }
    }

    fn columns_portable(&self, cols: std::ops::Range<usize>) {
        for r in 0..self.a.rows {
            for n in cols.clone() {
                let y = self.dot_scalar(r, n);
                // SAFETY: r < rows, n < N, `out` is rows·N long; columns are disjoint per chunk.
                unsafe { *self.out.add(r * self.w.n + n) = y };
            }
        }
    }

    /// Every work item, on this thread.
    pub fn run(&self) {
        for i in 0..self.chunks() {
            self.run_chunk(i);
        }
    }

    fn dot_scalar(&self, r: usize, n: usize) -> f32 {
        let (w, a) = (&self.w, self.a);
        let nb = w.blocks();
        let mut acc = 0.0f32;
        for b in 0..nb {
            let qs = &w.qs[(n * nb + b) * QK / 2..][..QK / 2];
            let at = r * a.padded * QK + (b / GROUP) * GROUP_BYTES + (b % GROUP) * (QK / 2);
            let (lo, hi) = (
                &a.x8[at..at + QK / 2],
                &a.x8[at + GROUP_BYTES / 2..][..QK / 2],
            );
            let isum: i32 = qs
                .iter()
                .zip(lo.iter().zip(hi))
                .map(|(q, (l, h))| (q & 0x0f) as i32 * *l as i32 + (q >> 4) as i32 * *h as i32)
                .sum();
            let at = r * a.padded + b;
            let d = f16_to_f32(w.d[n * nb + b]);
            acc += d * a.scale(at) * isum as f32
                + f16_to_f32(w.m[n * nb + b]) * a.sx[at]
                + d * a.cx[at];
        }
        acc
    }
}

/// The kernels, fastest first. [`Isa::best`] picks one at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Four blocks per instruction, `vpdpbusd` (Intel since Cascade Lake, AMD since Zen 4).
    Avx512Vnni,
    /// Two blocks per instruction, `vpmaddubsw` + `vpmaddwd` (x86-64 since Haswell).
    Avx2,
    /// Anything else; correct, several times slower.
    Portable,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Avx512Vnni, Isa::Avx2, Isa::Portable];

    /// The kernel to use: the fastest this CPU runs, or the one `SWITCHYARD_BLOCKOPS_ISA`
    /// (`avx512-vnni`, `avx2`, `portable`) names if this CPU runs it — for benchmarks and
    /// for ruling the kernel out when chasing a wrong answer. Decided once per process.
    pub fn best() -> Isa {
        static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            let wanted = std::env::var("SWITCHYARD_BLOCKOPS_ISA").ok();
            let usable = || Self::ALL.into_iter().filter(|i| i.available());
            usable()
                .find(|i| wanted.as_deref() == Some(i.name()))
                .or_else(|| usable().next())
                .unwrap_or(Isa::Portable)
        })
    }

    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            match self {
                Isa::Avx512Vnni => {
                    avx2 && has!("avx512f")
                        && has!("avx512bw")
                        && has!("avx512vl")
                        && has!("avx512vnni")
                }
                Isa::Avx2 => avx2,
                Isa::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }

    /// For logs and metrics: `avx512-vnni`, `avx2` or `portable`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }
}

/// Runs `$tile::<R>` over the activation rows in tiles of `$max` rows (each weight group is
/// unpacked once per tile), the last tile as large as what is left: one of `$small`.
/// Unsafe: the kernels' contract (features present, lengths checked by `Plan::new`).
#[cfg(target_arch = "x86_64")]
macro_rules! row_tiles {
    ($p:expr, $cols:expr, $tile:ident, $max:expr, [$($small:literal),*]) => {{
        let rows = $p.a.rows;
        let mut r = 0;
        while r < rows {
            match rows - r {
                $($small => $tile::<$small>($p, r, $cols.clone()),)*
                _ => $tile::<$max>($p, r, $cols.clone()),
            }
            r += $max;
        }
    }};
}
#[cfg(target_arch = "x86_64")]
use row_tiles;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{GROUP, GROUP_BYTES, Plan, QK};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// The portable quantization, compiled with AVX2 (rounding in one instruction).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn quantize_block(block: &[f32], x8: &mut [i8]) -> (f32, f32, i32) {
        super::quantize_block(block, x8)
    }

    pub(super) const TILE: usize = 4;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn columns(p: &Plan<'_>, cols: Range<usize>) {
        // SAFETY: the caller's contract.
        unsafe { super::row_tiles!(p, cols, tile, TILE, [1, 2, 3]) }
    }

    /// `n` (at most 4) half floats from `src`, the rest zero, as f32: one load for a whole
    /// group, element by element (no call) for a row's partial last one.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn halves4(src: *const u16, n: usize) -> __m128 {
        // SAFETY: the caller guarantees n readable values at src.
        unsafe {
            if n >= 4 {
                return _mm_cvtph_ps(_mm_loadl_epi64(src.cast()));
            }
            let at = |i: usize| if i < n { *src.add(i) as i16 } else { 0 };
            _mm_cvtph_ps(_mm_setr_epi16(at(0), at(1), at(2), 0, 0, 0, 0, 0))
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256, side: __m128) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, side);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// Output columns `cols` of activation rows r0..r0+R: the AVX-512 kernel's loop with
    /// half the width, two blocks per step (the activation layout is the same).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const R: usize>(p: &Plan<'_>, r0: usize, cols: Range<usize>) {
        let (w, a) = (&p.w, p.a);
        let nb = w.k / QK;
        let groups = a.padded / GROUP;
        let low_nibbles = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let spread = [
            _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1),
            _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3),
        ];
        // SAFETY (all pointer reads): as in the AVX-512 kernel; a pair's 32 nibble bytes are
        // read only when both its blocks exist, a lone last block reads its own 16.
        unsafe {
            for n in cols {
                let qrow = w.qs.as_ptr().add(n * nb * QK / 2);
                let drow = w.d.as_ptr().add(n * nb);
                let mrow = w.m.as_ptr().add(n * nb);
                let mut acc = [_mm256_setzero_ps(); R];
                // the per-block terms m·sx + d·cx, four blocks per step alongside
                let mut side = [_mm_setzero_ps(); R];
                for g in 0..groups {
                    let here = (nb - g * GROUP).min(GROUP);
                    let dw4 = halves4(drow.add(g * GROUP), here);
                    let m4 = halves4(mrow.add(g * GROUP), here);
                    for (j, side) in side.iter_mut().enumerate() {
                        // activation rows are padded to whole groups with zeros
                        let at = (r0 + j) * a.padded + g * GROUP;
                        let sx = _mm_loadu_ps(a.sx.as_ptr().add(at));
                        let cx = _mm_loadu_ps(a.cx.as_ptr().add(at));
                        *side = _mm_fmadd_ps(dw4, cx, _mm_fmadd_ps(m4, sx, *side));
                    }
                    let dw = _mm256_castps128_ps256(dw4);
                    for (h, spread) in spread.iter().enumerate() {
                        let blocks = here.saturating_sub(2 * h).min(2);
                        let src = qrow.add((g * GROUP + 2 * h) * QK / 2);
                        let v = match blocks {
                            0 => break,
                            1 => _mm256_zextsi128_si256(_mm_loadu_si128(src.cast())),
                            _ => _mm256_loadu_si256(src.cast()),
                        };
                        let lo = _mm256_and_si256(v, low_nibbles);
                        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low_nibbles);
                        let dw8 = _mm256_permutevar8x32_ps(dw, *spread);
                        for (j, acc) in acc.iter_mut().enumerate() {
                            let at = (r0 + j) * groups + g;
                            let x = a.x8.as_ptr().add(at * GROUP_BYTES + 32 * h);
                            let xlo = _mm256_loadu_si256(x.cast());
                            let xhi = _mm256_loadu_si256(x.add(GROUP_BYTES / 2).cast());
                            // 15·127·2·2 = 7620 fits i16
                            let s16 = _mm256_add_epi16(
                                _mm256_maddubs_epi16(lo, xlo),
                                _mm256_maddubs_epi16(hi, xhi),
                            );
                            let isum = _mm256_madd_epi16(s16, ones);
                            let s8 = _mm256_mul_ps(
                                dw8,
                                _mm256_loadu_ps(a.dx16.as_ptr().add(at * 16 + 8 * h)),
                            );
                            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), s8, *acc);
                        }
                    }
                }
                for (j, (acc, side)) in acc.iter().zip(&side).enumerate() {
                    *p.out.add((r0 + j) * w.n + n) = hsum(*acc, *side);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{GROUP, GROUP_BYTES, Plan, QK};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// See the portable `super::quantize_block`; `x8` must have 80 writable bytes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
    pub(super) unsafe fn quantize_block(block: &[f32], x8: *mut i8) -> (f32, f32, i32) {
        debug_assert!(block.len() == QK);
        // SAFETY: 32 floats in `block`, 80 bytes at `x8` (the caller's contract).
        unsafe {
            let lo = _mm512_loadu_ps(block.as_ptr());
            let hi = _mm512_loadu_ps(block.as_ptr().add(16));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
            let d = amax / 127.0;
            let id = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            // default MXCSR rounding: to nearest, ties to even
            let ql = _mm512_cvtps_epi32(_mm512_mul_ps(lo, id));
            let qh = _mm512_cvtps_epi32(_mm512_mul_ps(hi, id));
            _mm_storeu_si128(x8.cast(), _mm512_cvtsepi32_epi8(ql));
            _mm_storeu_si128(x8.add(GROUP_BYTES / 2).cast(), _mm512_cvtsepi32_epi8(qh));
            let isum = _mm512_reduce_add_epi32(_mm512_add_epi32(ql, qh));
            (d, _mm512_reduce_add_ps(_mm512_add_ps(lo, hi)), isum)
        }
    }

    /// Rows of activations handled together: each weight group is unpacked once for them.
    const TILE: usize = 8;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
    pub(super) unsafe fn columns(p: &Plan<'_>, cols: Range<usize>) {
        // SAFETY: the caller's contract.
        unsafe { super::row_tiles!(p, cols, tile, TILE, [1, 2, 3, 4, 5, 6, 7]) }
    }

    /// Output columns `cols` of activation rows r0..r0+R: weight rows two at a time (each
    /// activation load then feeds both), the last one alone.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
    unsafe fn tile<const R: usize>(p: &Plan<'_>, r0: usize, cols: Range<usize>) {
        let mut n = cols.start;
        // SAFETY (both): the caller's contract; n + W <= cols.end.
        while n + 2 <= cols.end {
            unsafe { weight_rows::<R, 2>(p, r0, n) };
            n += 2;
        }
        if n < cols.end {
            unsafe { weight_rows::<R, 1>(p, r0, n) };
        }
    }

    /// Outputs n0..n0+W of activation rows r0..r0+R.
    // i (weight row) and j (activation row) index several arrays and pointers at once.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
    unsafe fn weight_rows<const R: usize, const W: usize>(p: &Plan<'_>, r0: usize, n0: usize) {
        let (w, a) = (&p.w, p.a);
        let nb = w.k / QK;
        let groups = a.padded / GROUP;
        let low_nibbles = _mm512_set1_epi8(0x0f);
        // lanes 4j..4j+3 hold block j's partial sums: broadcast its scale to them
        let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        // SAFETY (all pointer reads below): row n of the weights spans qs[n·K/2..][..K/2] and
        // d/m[n·nb..][..nb] (lengths checked in Weights::new); full-group loads happen only
        // for groups of 4 whole blocks, the last partial group uses masked loads; activation
        // rows are padded to whole groups (Activations::quantize).
        unsafe {
            let qrow: [*const u8; W] =
                std::array::from_fn(|i| w.qs.as_ptr().add((n0 + i) * nb * QK / 2));
            let drow: [*const u16; W] = std::array::from_fn(|i| w.d.as_ptr().add((n0 + i) * nb));
            let mrow: [*const u16; W] = std::array::from_fn(|i| w.m.as_ptr().add((n0 + i) * nb));
            let mut acc = [[_mm512_setzero_ps(); R]; W];
            for g in 0..groups {
                let here = (nb - g * GROUP).min(GROUP);
                let mut lo = [_mm512_setzero_si512(); W];
                let mut hi = [_mm512_setzero_si512(); W];
                let mut dw16 = [_mm512_setzero_ps(); W];
                for i in 0..W {
                    let (v, dw) = if here == GROUP {
                        (
                            _mm512_loadu_si512(qrow[i].add(g * GROUP_BYTES / 2).cast()),
                            _mm_cvtph_ps(_mm_loadl_epi64(drow[i].add(g * GROUP).cast())),
                        )
                    } else {
                        let bytes = (1u64 << (here * QK / 2)) - 1;
                        (
                            _mm512_maskz_loadu_epi8(bytes, qrow[i].add(g * GROUP_BYTES / 2).cast()),
                            _mm_cvtph_ps(_mm_maskz_loadu_epi16(
                                (1u8 << here) - 1,
                                drow[i].add(g * GROUP).cast(),
                            )),
                        )
                    };
                    lo[i] = _mm512_and_si512(v, low_nibbles);
                    hi[i] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low_nibbles);
                    dw16[i] = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(dw));
                }
                for j in 0..R {
                    let at = (r0 + j) * groups + g;
                    let x = a.x8.as_ptr().add(at * GROUP_BYTES);
                    let xlo = _mm512_loadu_si512(x.cast());
                    let xhi = _mm512_loadu_si512(x.add(GROUP_BYTES / 2).cast());
                    let dx16 = _mm512_loadu_ps(a.dx16.as_ptr().add(at * 16));
                    for i in 0..W {
                        let isum = _mm512_dpbusd_epi32(
                            _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[i], xlo),
                            hi[i],
                            xhi,
                        );
                        let s16 = _mm512_mul_ps(dw16[i], dx16);
                        acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), s16, acc[i][j]);
                    }
                }
            }
            // the per-block terms: Σ_b m[n,b]·sx[r,b] + d[n,b]·cx[r,b], 16 blocks at a time
            let mut b = 0;
            while b < nb {
                let here = (nb - b).min(16);
                let mask = ((1u32 << here) - 1) as u16;
                let m16: [__m512; W] = std::array::from_fn(|i| {
                    _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, mrow[i].add(b).cast()))
                });
                let d16: [__m512; W] = std::array::from_fn(|i| {
                    _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, drow[i].add(b).cast()))
                });
                for j in 0..R {
                    let at = (r0 + j) * a.padded + b;
                    let sx = _mm512_maskz_loadu_ps(mask, a.sx.as_ptr().add(at));
                    let cx = _mm512_maskz_loadu_ps(mask, a.cx.as_ptr().add(at));
                    for i in 0..W {
                        acc[i][j] =
                            _mm512_fmadd_ps(d16[i], cx, _mm512_fmadd_ps(m16[i], sx, acc[i][j]));
                    }
                }
                b += here;
            }
            for i in 0..W {
                for j in 0..R {
                    *p.out.add((r0 + j) * w.n + n0 + i) = _mm512_reduce_add_ps(acc[i][j]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic xorshift stream (no test-only crates needed).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
    }

    fn f32_to_f16(v: f32) -> u16 {
        // round-to-nearest for the normal range the tests use
        let bits = v.to_bits();
        let sign = ((bits >> 16) & 0x8000) as u16;
        let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
        assert!(
            (1..31).contains(&exp),
            "test value {v} outside half's normal range"
        );
        let man = bits & 0x7f_ffff;
        let mut h = sign as u32 | (exp as u32) << 10 | man >> 13;
        if man & 0x1fff > 0x1000 || (man & 0x1fff == 0x1000 && h & 1 == 1) {
            h += 1;
        }
        h as u16
    }

    struct Case {
        k: usize,
        n: usize,
        qs: Vec<u8>,
        d: Vec<u16>,
        m: Vec<u16>,
    }

    impl Case {
        fn random(k: usize, n: usize, rng: &mut Rng) -> Self {
            let blocks = n * k / QK;
            Case {
                k,
                n,
                qs: (0..n * k / 2).map(|_| rng.next() as u8).collect(),
                d: (0..blocks)
                    .map(|_| f32_to_f16(0.001 + 0.05 * rng.unit().abs()))
                    .collect(),
                m: (0..blocks)
                    .map(|_| f32_to_f16(-0.4 * (0.01 + rng.unit().abs())))
                    .collect(),
            }
        }
        fn weights(&self) -> Weights<'_> {
            Weights::new(self.k, self.n, &self.qs, &self.d, &self.m).unwrap()
        }
        /// The dequantized weight, ggml's arithmetic: d·q + m.
        fn dense(&self, n: usize, i: usize) -> f64 {
            let (b, j) = (i / QK, i % QK);
            let byte = self.qs[n * self.k / 2 + b * QK / 2 + j % (QK / 2)];
            let q = if j < QK / 2 { byte & 0x0f } else { byte >> 4 };
            let at = n * self.k / QK + b;
            f16_to_f32(self.d[at]) as f64 * q as f64 + f16_to_f32(self.m[at]) as f64
        }
    }

    /// The product on `isa`, or None when this CPU lacks it.
    fn run_on(case: &Case, x: &[f32], isa: Isa) -> Option<Vec<f32>> {
        let a = Activations::quantize(x, case.k).unwrap();
        let mut out = vec![f32::NAN; a.rows() * case.n];
        Plan::new(case.weights(), &a, &mut out)
            .unwrap()
            .on(isa)?
            .run();
        Some(out)
    }

    fn run(case: &Case, x: &[f32]) -> Vec<f32> {
        run_on(case, x, Isa::best()).unwrap()
    }

    #[test]
    fn half_conversion_matches_the_hardware_for_every_value() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("f16c") {
            for h in 0..=u16::MAX {
                // SAFETY: f16c checked above.
                let hw = unsafe { hw_half(h) };
                let sw = f16_to_f32(h);
                assert!(
                    hw.to_bits() == sw.to_bits() || (hw.is_nan() && sw.is_nan()),
                    "{h:#06x}: {hw} vs {sw}"
                );
            }
            return;
        }
        // without F16C: spot values
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "f16c")]
    unsafe fn hw_half(h: u16) -> f32 {
        use std::arch::x86_64::*;
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
    }

    #[test]
    fn the_product_matches_the_dequantized_weights_in_f64() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for &(k, n, rows) in &[
            (576, 70, 1),
            (576, 33, 5),
            (1536, 40, 4),
            (96, 17, 9),
            (32, 1, 2),
        ] {
            let case = Case::random(k, n, &mut rng);
            let x: Vec<f32> = (0..rows * k).map(|_| rng.unit()).collect();
            for isa in Isa::ALL {
                let Some(got) = run_on(&case, &x, isa) else {
                    continue;
                };
                let scalar = isa;
                for r in 0..rows {
                    for col in 0..n {
                        let want: f64 = (0..k)
                            .map(|i| x[r * k + i] as f64 * case.dense(col, i))
                            .sum();
                        // int8 activations: each block's error is at most half a step of
                        // max|x|/127 per input, times the weights' magnitude.
                        let scale: f64 =
                            (0..k).map(|i| case.dense(col, i).abs()).sum::<f64>() / 127.0;
                        let err = (got[r * n + col] as f64 - want).abs();
                        assert!(
                            err <= scale,
                            "k={k} n={n} r={r} col={col} {scalar:?}: {} vs {want}",
                            got[r * n + col]
                        );
                    }
                }
            }
        }
    }

    /// The centred arithmetic (MatMulNBits on q − 8, plus (m + 8d)·sx) in f64 from the same
    /// quantized activations: what the op must equal up to f32 rounding.
    #[test]
    fn the_product_is_the_centred_int8_arithmetic() {
        let mut rng = Rng(0x51ed_2701);
        for &(k, n, rows) in &[(576, 40, 3), (1536, 24, 1), (160, 9, 10)] {
            let case = Case::random(k, n, &mut rng);
            let x: Vec<f32> = (0..rows * k).map(|_| 2.0 * rng.unit()).collect();
            let a = Activations::quantize(&x, k).unwrap();
            let got = run(&case, &x);
            let nb = k / QK;
            for r in 0..rows {
                for col in 0..n {
                    let mut want = 0.0f64;
                    for b in 0..nb {
                        let at =
                            r * a.padded * QK + (b / GROUP) * GROUP_BYTES + (b % GROUP) * (QK / 2);
                        let isum: i64 = (0..QK)
                            .map(|i| {
                                let x8 = a.x8[at
                                    + if i < QK / 2 {
                                        i
                                    } else {
                                        GROUP_BYTES / 2 + i - QK / 2
                                    }];
                                let byte = case.qs[(col * nb + b) * QK / 2 + i % (QK / 2)];
                                let q = if i < QK / 2 { byte & 0x0f } else { byte >> 4 };
                                (q as i64 - 8) * x8 as i64
                            })
                            .sum();
                        let (d, m) = (
                            f16_to_f32(case.d[col * nb + b]) as f64,
                            f16_to_f32(case.m[col * nb + b]) as f64,
                        );
                        let sx: f64 = x[r * k + b * QK..][..QK].iter().map(|v| *v as f64).sum();
                        want +=
                            d * a.scale(r * a.padded + b) as f64 * isum as f64 + (m + 8.0 * d) * sx;
                    }
                    let y = got[r * n + col] as f64;
                    assert!(
                        (y - want).abs() <= 2e-5 * want.abs().max(1.0),
                        "k={k} r={r} col={col}: {y} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn simd_quantization_equals_the_portable_one() {
        #[cfg(target_arch = "x86_64")]
        for isa in [Isa::Avx512Vnni, Isa::Avx2]
            .into_iter()
            .filter(|i| i.available())
        {
            let mut rng = Rng(99);
            for round in 0..300 {
                let scale = [1e-3, 1.0, 300.0][round % 3];
                let block: Vec<f32> = (0..QK).map(|_| scale * rng.unit()).collect();
                let (mut a, mut b) = (vec![0i8; 80], vec![0i8; 80]);
                let (da, sa, ia) = quantize_block(&block, &mut a);
                let (db, sb, ib) = quantize_block_on(&block, &mut b, isa);
                assert_eq!((&a, da, ia), (&b, db, ib), "{isa:?}");
                assert!((sa - sb).abs() <= 1e-5 * scale * QK as f32);
            }
        }
    }

    #[test]
    fn every_kernel_agrees_with_the_portable_one_to_float_rounding() {
        let mut rng = Rng(42);
        let mut compared = 0;
        // K = 576: 18 blocks, a half-full last group; K = 160: 5, a lone last block
        for &(k, n, rows) in &[
            (576, 960, 1),
            (576, 1536, 7),
            (1536, 576, 3),
            (160, 64, 13),
            (96, 40, 2),
        ] {
            let case = Case::random(k, n, &mut rng);
            let x: Vec<f32> = (0..rows * k).map(|_| 3.0 * rng.unit()).collect();
            let portable = run_on(&case, &x, Isa::Portable).unwrap();
            for isa in [Isa::Avx512Vnni, Isa::Avx2] {
                let Some(v) = run_on(&case, &x, isa) else {
                    continue;
                };
                compared += 1;
                let worst = portable
                    .iter()
                    .zip(&v)
                    .map(|(a, b)| (a - b).abs() / a.abs().max(1.0))
                    .fold(0.0f32, f32::max);
                assert!(
                    worst < 1e-5,
                    "{isa:?} k={k} n={n} rows={rows}: relative difference {worst}"
                );
            }
        }
        // on this project's machines both SIMD kernels run; elsewhere say what was skipped
        if compared < 10 {
            eprintln!(
                "compared {compared} of 10 kernel runs: this CPU lacks some instruction sets"
            );
        }
    }

    #[test]
    fn zero_activations_give_zero_and_a_constant_row_gives_its_block_sums() {
        let mut rng = Rng(7);
        let case = Case::random(64, 5, &mut rng);
        assert!(run(&case, &[0.0; 64]).iter().all(|y| *y == 0.0));
        // x = 1 everywhere: y[n] = Σ over the row of d·q + m, computed exactly here in f64
        let got = run(&case, &[1.0; 64]);
        for (col, y) in got.iter().enumerate() {
            let want: f64 = (0..64).map(|i| case.dense(col, i)).sum();
            assert!((*y as f64 - want).abs() < 1e-4, "{y} vs {want}");
        }
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        assert!(Weights::new(48, 1, &[0; 24], &[0; 1], &[0; 1]).is_err());
        assert!(Weights::new(32, 2, &[0; 16], &[0; 2], &[0; 2]).is_err());
        assert!(Activations::quantize(&[0.0; 40], 32).is_err());
        let a = Activations::quantize(&[0.0; 64], 32).unwrap();
        let w = Weights::new(32, 3, &[0; 48], &[0; 3], &[0; 3]).unwrap();
        assert!(Plan::new(w, &a, &mut [0.0; 5]).is_err());
        let w64 = Weights::new(64, 1, &[0; 32], &[0; 2], &[0; 2]).unwrap();
        assert!(Plan::new(w64, &a, &mut [0.0; 2]).is_err());
    }
}
