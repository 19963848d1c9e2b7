//! Reads the f32 tensors of a `.safetensors` file: an 8-byte little-endian header length, a JSON
//! header naming each tensor's dtype, shape and byte range, then the raw data.

use std::{collections::HashMap, path::Path};

use anyhow::{Context, bail};

pub struct Tensors {
    data: Vec<u8>,
    index: HashMap<String, (Vec<usize>, usize, usize)>,
}

impl Tensors {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        anyhow::ensure!(data.len() >= 8, "{} is not a safetensors file", path.display());
        let len = u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) as usize;
        anyhow::ensure!(8 + len <= data.len(), "{}: header runs past the end", path.display());
        let header: serde_json::Value = serde_json::from_slice(&data[8..8 + len]).context("safetensors header")?;
        let base = 8 + len;
        let mut index = HashMap::new();
        for (name, t) in header.as_object().context("safetensors header is not an object")? {
            if name == "__metadata__" || t["dtype"] != "F32" {
                continue;
            }
            let shape: Vec<usize> =
                t["shape"].as_array().context("shape")?.iter().filter_map(|d| d.as_u64().map(|d| d as usize)).collect();
            let offsets = t["data_offsets"].as_array().context("data_offsets")?;
            let (start, end) = (
                base + offsets[0].as_u64().context("offset")? as usize,
                base + offsets[1].as_u64().context("offset")? as usize,
            );
            if end > data.len() || end < start || (end - start) != 4 * shape.iter().product::<usize>() {
                bail!("tensor {name} has an inconsistent size");
            }
            index.insert(name.clone(), (shape, start, end));
        }
        Ok(Self { data, index })
    }

    /// The tensor's values, checking its shape.
    pub fn get(&self, name: &str, shape: &[usize]) -> anyhow::Result<Vec<f32>> {
        let (have, start, end) = self.index.get(name).with_context(|| format!("the model has no tensor {name}"))?;
        anyhow::ensure!(have == shape, "tensor {name} has shape {have:?}, expected {shape:?}");
        Ok(self.data[*start..*end].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }
}
