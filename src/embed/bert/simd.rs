//! Element-wise kernels (GELU, softmax, LayerNorm) written so that the compiler vectorises
//! them, compiled once more for AVX-512 and for AVX2+FMA and picked at run time.

/// e^x in f32 for x in [-87, 88] (relative error about 2e-7): range reduction by ln 2 with a
/// magic-number round, a degree-6 polynomial, and the exponent put in with bit arithmetic —
/// no branches and no library calls, so loops over it vectorise.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let k = shifted - ROUND;
    // the rounded integer sits in the low mantissa bits of `shifted`: no float-to-int conversion
    let ki = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((ki + 127) as u32) << 23)
}

/// erf(x), absolute error below 1.5e-7 (Abramowitz and Stegun 7.1.26).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

#[inline(always)]
fn gelu_generic(xs: &mut [f32]) {
    for x in xs {
        *x = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// Sum in 16 independent lanes, so that the loop vectorises (a single running sum cannot be
/// reordered by the compiler).
#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            lanes[i] += f(c[i]);
        }
    }
    let rest: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    lanes.iter().sum::<f32>() + rest
}

#[inline(always)]
fn lane_max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = xs.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    let rest = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    lanes.iter().fold(rest, |m, &x| if x > m { x } else { m })
}

#[inline(always)]
fn softmax_generic(row: &mut [f32]) {
    let max = lane_max(row);
    for x in row.iter_mut() {
        *x = exp(*x - max);
    }
    let inv = 1.0 / lane_sum(row, |x| x);
    for x in row.iter_mut() {
        *x *= inv;
    }
}

#[inline(always)]
fn layer_norm_generic(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = lane_sum(row, |x| x) / n;
    let var = lane_sum(row, |x| (x - mean) * (x - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((x, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *x = (*x - mean) * inv * g + b;
    }
}

macro_rules! dispatch {
    ($name:ident, $generic:ident, ($($arg:ident : $ty:ty),*)) => {
        pub fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) { $generic($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) { $generic($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

dispatch!(gelu, gelu_generic, (xs: &mut [f32]));
dispatch!(softmax, softmax_generic, (row: &mut [f32]));
dispatch!(layer_norm, layer_norm_generic, (row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_are_accurate() {
        for i in -800..800 {
            let x = i as f32 / 10.0;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            assert!(((got - want) / want).abs() < 5e-7, "exp({x}) = {got}, want {want}");
        }
        for (x, want) in [
            (0.0f32, 0.0f64),
            (0.5, 0.520_499_877_8),
            (1.0, 0.842_700_792_9),
            (2.0, 0.995_322_265),
            (-1.0, -0.842_700_792_9),
        ] {
            assert!((erf(x) as f64 - want).abs() < 3e-7, "erf({x}) = {}", erf(x));
        }
    }

    #[test]
    fn kernels_match_their_definitions() {
        let mut xs: Vec<f32> = (-50..50).map(|i| i as f32 / 10.0).collect();
        let want: Vec<f32> = xs.iter().map(|&x| 0.5 * x * (1.0 + libm_erf(x / std::f32::consts::SQRT_2))).collect();
        gelu(&mut xs);
        for (g, w) in xs.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
        let mut row = vec![1.0, 2.0, 3.0, 1000.0];
        softmax(&mut row);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(row[3] > 0.999_999);
        let mut row = vec![1.0, 2.0, 3.0, 4.0];
        layer_norm(&mut row, &[1.0; 4], &[0.0; 4], 1e-12);
        assert!((row.iter().sum::<f32>()).abs() < 1e-5);
        assert!((row[3] - 1.341_640_8).abs() < 1e-5);
    }

    /// erf by its series (slow, exact enough for a test oracle)
    fn libm_erf(x: f32) -> f32 {
        let x = x as f64;
        let mut sum = 0.0;
        let mut term = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 && n < 200.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
        }
        (sum * 2.0 / std::f64::consts::PI.sqrt()) as f32
    }
}
