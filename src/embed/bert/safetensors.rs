//! Reads the f32 tensors of a `.safetensors` file: an 8-byte little-endian header length, a JSON
//! header naming each tensor's dtype, shape and byte range, then the raw data.
//!
//! Kept here rather than taken from the `safetensors` crate: the model needs only F32 tensors
//! read once at start-up, and this is fifty lines with no dependency. Every length and offset in
//! the header is checked (with checked arithmetic) before it is used, so a truncated or garbled
//! model file is an error, never a panic.

use std::{collections::HashMap, path::Path};

use anyhow::{Context, bail};

pub struct Tensors {
    data: Vec<u8>,
    index: HashMap<String, (Vec<usize>, usize, usize)>,
}

impl Tensors {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(data).with_context(|| format!("{} is not a readable safetensors file", path.display()))
    }

    pub fn parse(data: Vec<u8>) -> anyhow::Result<Self> {
        let head: [u8; 8] = data.get(..8).context("shorter than its header length")?.try_into()?;
        let len = usize::try_from(u64::from_le_bytes(head)).context("header length")?;
        let base = len.checked_add(8).filter(|&b| b <= data.len()).context("the header runs past the end")?;
        let header: serde_json::Value = serde_json::from_slice(&data[8..base]).context("the header is not JSON")?;
        let mut index = HashMap::new();
        for (name, t) in header.as_object().context("the header is not an object")? {
            if name == "__metadata__" || t["dtype"] != "F32" {
                continue;
            }
            let shape = t["shape"]
                .as_array()
                .with_context(|| format!("tensor {name} has no shape"))?
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<Vec<usize>>>()
                .with_context(|| format!("tensor {name} has a malformed shape"))?;
            let offset = |i: usize| {
                t["data_offsets"]
                    .get(i)
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|o| usize::try_from(o).ok())
                    .and_then(|o| o.checked_add(base))
            };
            let (Some(start), Some(end)) = (offset(0), offset(1)) else {
                bail!("tensor {name} has malformed data offsets");
            };
            let bytes = shape.iter().try_fold(4usize, |n, &d| n.checked_mul(d));
            if end > data.len() || end < start || bytes != Some(end - start) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn values(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_f32_tensors_and_checks_shapes() {
        let header = r#"{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},
                         "i":{"dtype":"I64","shape":[1],"data_offsets":[16,24]}}"#;
        let mut data = values(&[1.0, 2.0, 3.0, 4.0]);
        data.extend_from_slice(&7i64.to_le_bytes());
        let t = Tensors::parse(file(header, &data)).unwrap();
        assert_eq!(t.get("w", &[2, 2]).unwrap(), [1.0, 2.0, 3.0, 4.0]);
        assert!(t.get("w", &[4]).is_err());
        assert!(t.get("i", &[1]).is_err(), "only F32 tensors are read");
    }

    #[test]
    fn truncated_and_garbled_files_are_errors() {
        let good = file(r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#, &values(&[0.0; 4]));
        // every truncation of a good file
        for cut in 0..good.len() {
            assert!(Tensors::parse(good[..cut].to_vec()).is_err(), "cut at {cut}");
        }
        let bad_headers = [
            r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0]}}"#,
            r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[]}}"#,
            r#"{"w":{"dtype":"F32","shape":[2,2]}}"#,
            r#"{"w":{"dtype":"F32","shape":[2,"x"],"data_offsets":[0,16]}}"#,
            r#"{"w":{"dtype":"F32","data_offsets":[0,16]}}"#,
            r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[16,0]}}"#,
            r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[18446744073709551615,16]}}"#,
            r#"{"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}}"#,
            r#"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}}"#,
            r#"[1,2,3]"#,
            "not json",
        ];
        for header in bad_headers {
            assert!(Tensors::parse(file(header, &values(&[0.0; 4]))).is_err(), "{header}");
        }
        // a header length far past the end, and one that overflows when the 8 bytes are added
        for len in [1u64 << 40, u64::MAX] {
            let mut f = len.to_le_bytes().to_vec();
            f.extend_from_slice(b"{}");
            assert!(Tensors::parse(f).is_err());
        }
    }
}
