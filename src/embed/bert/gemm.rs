//! Dense layers `y = x·Wᵀ + b` for the encoder, with two kernels chosen at load time:
//!
//! - **AMX bf16** on x86-64 processors with Advanced Matrix Extensions (Sapphire Rapids and
//!   later): weights are packed once into the tile layout `TDPBF16PS` reads, activations are
//!   rounded to bf16 per call, products accumulate in f32. Tile instructions are issued through
//!   inline assembly (stable Rust has no AMX intrinsics).
//! - **f32** everywhere else, through `matrixmultiply` (AVX-512/AVX2/FMA as available).
//!
//! Rows are split between threads; each thread configures its own tiles.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    AmxBf16,
    F32,
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::AmxBf16 => "amx-bf16",
            Kernel::F32 => "f32",
        }
    }
}

/// The best kernel this machine runs (AMX needs the CPU feature and the kernel's permission).
pub fn best_kernel() -> Kernel {
    static BEST: OnceLock<Kernel> = OnceLock::new();
    *BEST.get_or_init(|| if amx::available() { Kernel::AmxBf16 } else { Kernel::F32 })
}

pub struct Linear {
    pub inputs: usize,
    pub outputs: usize,
    /// `[outputs × inputs]`, row-major, as PyTorch stores it
    weight: Vec<f32>,
    bias: Vec<f32>,
    /// bf16 tiles for AMX (empty for the f32 kernel)
    packed: Vec<u16>,
    kernel: Kernel,
}

impl Linear {
    pub fn new(weight: Vec<f32>, bias: Vec<f32>, inputs: usize, outputs: usize, kernel: Kernel) -> Self {
        assert_eq!(weight.len(), inputs * outputs);
        assert_eq!(bias.len(), outputs);
        // AMX only where it is available (this also obtains the kernel's permission to use it)
        let amx = kernel == Kernel::AmxBf16
            && best_kernel() == Kernel::AmxBf16
            && inputs.is_multiple_of(32)
            && outputs.is_multiple_of(32);
        let kernel = if amx { Kernel::AmxBf16 } else { Kernel::F32 };
        let packed = if kernel == Kernel::AmxBf16 { amx::pack_weights(&weight, inputs, outputs) } else { Vec::new() };
        Self { inputs, outputs, weight, bias, packed, kernel }
    }

    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// `out[rows × outputs] = x[rows × inputs] · Wᵀ + b`, using up to `threads` threads.
    pub fn forward(&self, x: &[f32], rows: usize, out: &mut [f32], threads: usize) {
        self.forward_with(x, rows, out, threads, false);
    }

    /// As [`Linear::forward`], then GELU on every output (in the same pass over the rows).
    pub fn forward_gelu(&self, x: &[f32], rows: usize, out: &mut [f32], threads: usize) {
        self.forward_with(x, rows, out, threads, true);
    }

    fn forward_with(&self, x: &[f32], rows: usize, out: &mut [f32], threads: usize, gelu: bool) {
        assert!(x.len() >= rows * self.inputs && out.len() >= rows * self.outputs);
        let threads = threads.clamp(1, rows.div_ceil(32).max(1));
        // split the rows into per-thread slabs of whole 32-row blocks
        let per = rows.div_ceil(32).div_ceil(threads) * 32;
        std::thread::scope(|s| {
            let mut handles = Vec::new();
            for (t, out_slab) in out[..rows * self.outputs].chunks_mut(per * self.outputs).enumerate() {
                let start = t * per;
                let n = out_slab.len() / self.outputs;
                let x_slab = &x[start * self.inputs..(start + n) * self.inputs];
                let mut work = move || self.forward_rows(x_slab, n, out_slab, gelu);
                if t + 1 == rows.div_ceil(per) {
                    work();
                } else {
                    handles.push(s.spawn(work));
                }
            }
            for h in handles {
                h.join().expect("a GEMM thread panicked");
            }
        });
    }

    fn forward_rows(&self, x: &[f32], rows: usize, out: &mut [f32], gelu: bool) {
        match self.kernel {
            Kernel::AmxBf16 => amx::gemm(x, rows, self.inputs, &self.packed, self.outputs, out),
            Kernel::F32 => unsafe {
                // SAFETY: the slices hold rows×inputs, outputs×inputs and rows×outputs values and
                // the strides describe exactly those row-major layouts.
                matrixmultiply::sgemm(
                    rows,
                    self.inputs,
                    self.outputs,
                    1.0,
                    x.as_ptr(),
                    self.inputs as isize,
                    1,
                    self.weight.as_ptr(),
                    1,
                    self.inputs as isize,
                    0.0,
                    out.as_mut_ptr(),
                    self.outputs as isize,
                    1,
                );
            },
        }
        for row in out.chunks_exact_mut(self.outputs).take(rows) {
            for (y, b) in row.iter_mut().zip(&self.bias) {
                *y += b;
            }
            if gelu {
                super::simd::gelu(row);
            }
        }
    }
}

/// f32 → bf16, rounding to nearest even.
#[inline]
pub fn bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}

#[cfg(target_arch = "x86_64")]
mod amx {
    use std::arch::asm;

    use super::bf16;

    /// CPUID leaf 7: AMX-BF16 (EDX bit 22) and AMX-TILE (EDX bit 24); then ask Linux for the
    /// tile data state (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA).
    pub fn available() -> bool {
        if std::env::var("EMBED_KERNEL").is_ok_and(|k| k == "f32") {
            return false;
        }
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        let (bf16, tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
        if !(bf16 && tile && cfg!(target_os = "linux")) {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
        const XFEATURE_XTILEDATA: u64 = 18;
        let ret: i64;
        // SAFETY: arch_prctl (syscall 158) with these arguments only changes this process's
        // permission to use the AMX register state.
        unsafe {
            asm!("syscall", inlateout("rax") 158i64 => ret, in("rdi") ARCH_REQ_XCOMP_PERM, in("rsi") XFEATURE_XTILEDATA,
                 lateout("rcx") _, lateout("r11") _, options(nostack));
        }
        ret == 0
    }

    /// Packs `W [n × k]` (y = x·Wᵀ) into 16×32 bf16 tiles of B = Wᵀ in the pair-interleaved
    /// layout `TDPBF16PS` expects: per 16-column block and 32-row block of B, 16 rows of
    /// (16 columns × 2 consecutive k).
    pub fn pack_weights(w: &[f32], k: usize, n: usize) -> Vec<u16> {
        let (kb, nb) = (k / 32, n / 16);
        let mut packed = vec![0u16; k * n];
        for j in 0..nb {
            for i in 0..kb {
                let tile = &mut packed[(j * kb + i) * 512..(j * kb + i + 1) * 512];
                for r in 0..16 {
                    for c in 0..16 {
                        let col = j * 16 + c;
                        let k0 = i * 32 + 2 * r;
                        tile[r * 32 + c * 2] = bf16(w[col * k + k0]);
                        tile[r * 32 + c * 2 + 1] = bf16(w[col * k + k0 + 1]);
                    }
                }
            }
        }
        packed
    }

    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    /// palette 1; tiles 0–3: 16×16 f32 accumulators; 4–5: 16×32 bf16 of A; 6–7: 16 rows of B pairs
    fn config() -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = 64; // bytes per row
            c[48 + t] = 16; // rows
        }
        TileConfig(c)
    }

    /// `out[rows × n] = x[rows × k] · B` with B packed by [`pack_weights`].
    pub fn gemm(x: &[f32], rows: usize, k: usize, packed: &[u16], n: usize, out: &mut [f32]) {
        let m_pad = rows.div_ceil(32) * 32;
        // A in bf16, rows padded with zeros to whole 32-row blocks
        let mut a: Vec<u16> = Vec::with_capacity(m_pad * k);
        a.extend(x[..rows * k].iter().map(|v| bf16(*v)));
        a.resize(m_pad * k, 0);
        // full blocks are stored straight into `out`; a last partial block goes through `tail`
        let full = rows / 32 * 32;
        let mut tail = vec![0f32; if full < rows { 32 * n } else { 0 }];
        let kb = k / 32;
        let cfg = config();
        let a_stride = k * 2;
        let c_stride = n * 4;
        // SAFETY: the tile configuration matches every load/store below; all pointers stay inside
        // `a` (m_pad × k bf16), `packed` (k × n bf16), `out` (rows × n f32, whole blocks only)
        // and `tail` (32 × n f32), whose row strides are passed with each access; tiles are
        // released before returning.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack));
            // 32 rows of A (2 tiles, 32·k bf16: stays in L1) against every 32-column pair of B
            // (all of B stays in L2); 4 accumulators per 32×32 block of C
            for m0 in (0..m_pad).step_by(32) {
                let a0 = a.as_ptr().add(m0 * k);
                let a1 = a.as_ptr().add((m0 + 16) * k);
                for nj in (0..n / 16).step_by(2) {
                    let b0 = packed.as_ptr().add(nj * kb * 512);
                    let b1 = packed.as_ptr().add((nj + 1) * kb * 512);
                    asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack));
                    for i in 0..kb {
                        asm!(
                            "tileloadd tmm4, [{a0} + {sa}*1]",
                            "tileloadd tmm6, [{b0} + {sb}*1]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tileloadd tmm7, [{b1} + {sb}*1]",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tileloadd tmm5, [{a1} + {sa}*1]",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            a0 = in(reg) a0.add(i * 32),
                            a1 = in(reg) a1.add(i * 32),
                            b0 = in(reg) b0.add(i * 512),
                            b1 = in(reg) b1.add(i * 512),
                            sa = in(reg) a_stride,
                            sb = in(reg) 64usize,
                            options(nostack),
                        );
                    }
                    let c00 =
                        if m0 < full { out.as_mut_ptr().add(m0 * n + nj * 16) } else { tail.as_mut_ptr().add(nj * 16) };
                    asm!(
                        "tilestored [{c00} + {sc}*1], tmm0",
                        "tilestored [{c01} + {sc}*1], tmm1",
                        "tilestored [{c10} + {sc}*1], tmm2",
                        "tilestored [{c11} + {sc}*1], tmm3",
                        c00 = in(reg) c00,
                        c01 = in(reg) c00.add(16),
                        c10 = in(reg) c00.add(16 * n),
                        c11 = in(reg) c00.add(16 * n + 16),
                        sc = in(reg) c_stride,
                        options(nostack),
                    );
                }
            }
            asm!("tilerelease", options(nostack));
        }
        if full < rows {
            out[full * n..rows * n].copy_from_slice(&tail[..(rows - full) * n]);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod amx {
    pub fn available() -> bool {
        false
    }
    pub fn pack_weights(_: &[f32], _: usize, _: usize) -> Vec<u16> {
        Vec::new()
    }
    pub fn gemm(_: &[f32], _: usize, _: usize, _: &[u16], _: usize, _: &mut [f32]) {
        unreachable!("AMX is only chosen on x86-64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }

    fn reference(x: &[f32], rows: usize, w: &[f32], b: &[f32], k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * n];
        for r in 0..rows {
            for j in 0..n {
                let mut acc = b[j] as f64;
                for i in 0..k {
                    acc += x[r * k + i] as f64 * w[j * k + i] as f64;
                }
                out[r * n + j] = acc as f32;
            }
        }
        out
    }

    fn check(kernel: Kernel, rows: usize, k: usize, n: usize, tolerance: f32) {
        let (x, w, b) = (random(rows * k, 1), random(n * k, 2), random(n, 3));
        let layer = Linear::new(w.clone(), b.clone(), k, n, kernel);
        let mut out = vec![0f32; rows * n];
        layer.forward(&x, rows, &mut out, 2);
        let want = reference(&x, rows, &w, &b, k, n);
        let scale = (k as f32).sqrt() * 0.3;
        for (i, (g, e)) in out.iter().zip(&want).enumerate() {
            assert!((g - e).abs() <= tolerance * scale, "{} at {i}: {g} vs {e}", kernel.name());
        }
    }

    #[test]
    fn f32_kernel_matches_the_definition() {
        check(Kernel::F32, 37, 64, 96, 1e-5);
        check(Kernel::F32, 1, 384, 32, 1e-5);
    }

    #[test]
    fn amx_kernel_matches_within_bf16_rounding() {
        if best_kernel() != Kernel::AmxBf16 {
            eprintln!("no AMX on this machine: the f32 kernel serves");
            return;
        }
        for rows in [1, 16, 31, 33, 100] {
            check(Kernel::AmxBf16, rows, 384, 1152, 1e-2);
        }
        check(Kernel::AmxBf16, 70, 1536, 384, 1e-2);
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16(1.0), 0x3F80);
        assert_eq!(bf16(-2.0), 0xC000);
        // 1.00390625 = 1 + 2^-8 lies exactly between two bf16 values: ties go to the even one
        assert_eq!(bf16(f32::from_bits(0x3F80_8000)), 0x3F80);
        assert_eq!(f32::from_bits((bf16(1.01) as u32) << 16), 1.0078125);
    }
}
