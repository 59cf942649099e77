//! Safetensors checkpoints, single-file or sharded, as named tch tensors.
//!
//! Each file is memory-mapped and parsed with the `safetensors` crate; every tensor is created
//! with exactly one copy out of the map (into an uninitialised libtorch tensor, no intermediate
//! `Vec`). A requested kind or device conversion is one more pass, done by libtorch.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use crate::error::{LensError, Result};

/// The tensors of a checkpoint, by name.
///
/// Names are the checkpoint's own (for GPT-2: `transformer.h.0.attn.c_attn.weight`, ...).
/// [`Weights::get`] hands out a tensor sharing storage with the one held here;
/// [`Weights::take`] moves it out, so that a model converting weights does not keep two copies
/// alive.
#[derive(Debug)]
pub struct Weights {
    tensors: BTreeMap<String, Tensor>,
    taken: BTreeSet<String>,
    files: Vec<PathBuf>,
}

impl Weights {
    /// Loads every tensor of the given safetensors files.
    ///
    /// An entry ending in `.json` is a shard index (`model.safetensors.index.json`): its shards,
    /// resolved next to it, are loaded, and every tensor its `weight_map` names must be in the
    /// shard it names.
    ///
    /// `kind`, when given, must be a floating-point kind: floating-point tensors are converted to
    /// it, integer and bool tensors (buffers) keep their type. Tensors are placed on `device`.
    ///
    /// Errors name the file: unreadable ([`LensError::Io`]), truncated or corrupt
    /// ([`LensError::Safetensors`]), an element type tch cannot hold
    /// ([`LensError::UnsupportedDtype`]), a name in two files ([`LensError::DuplicateTensor`]),
    /// an inconsistent index ([`LensError::ShardIndex`]). An empty list is a
    /// [`LensError::EmptyInput`].
    pub fn load<P: AsRef<Path>>(files: &[P], kind: Option<Kind>, device: Device) -> Result<Self> {
        if files.is_empty() {
            return Err(LensError::EmptyInput(
                "Weights::load got no checkpoint files".to_string(),
            ));
        }
        if let Some(kind) = kind {
            if !is_float(kind) {
                return Err(LensError::NonFloatKind(kind));
            }
        }
        let mut shards: Vec<PathBuf> = Vec::new();
        let mut indexes: Vec<ShardIndex> = Vec::new();
        for file in files {
            let file = file.as_ref();
            if file.extension().is_some_and(|e| e == "json") {
                let index = ShardIndex::read(file)?;
                for shard in index.shard_paths() {
                    if !shards.contains(&shard) {
                        shards.push(shard);
                    }
                }
                indexes.push(index);
            } else if !shards.iter().any(|s| s == file) {
                shards.push(file.to_path_buf());
            }
        }

        let mut tensors = BTreeMap::new();
        let mut origin: HashMap<String, usize> = HashMap::new();
        for (i, shard) in shards.iter().enumerate() {
            let file = File::open(shard).map_err(|e| LensError::io(shard, e))?;
            // SAFETY: the map is only read, and only while this function runs; every tensor is
            // copied out of it before it is dropped. A file truncated by another process while
            // mapped would fault, which is the documented risk of memory-mapping any file.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| LensError::io(shard, e))?;
            let parsed = SafeTensors::deserialize(&map).map_err(|e| LensError::Safetensors {
                path: shard.clone(),
                message: e.to_string(),
            })?;
            for (name, view) in parsed.iter() {
                if let Some(&first) = origin.get(name) {
                    return Err(LensError::DuplicateTensor {
                        name: name.to_string(),
                        first: shards[first].clone(),
                        second: shard.clone(),
                    });
                }
                let tensor = tensor_from_view(shard, name, &view, kind, device)?;
                origin.insert(name.to_string(), i);
                tensors.insert(name.to_string(), tensor);
            }
        }

        for index in &indexes {
            for (name, shard_name) in &index.weight_map {
                let expected = index.dir().join(shard_name);
                match origin.get(name) {
                    Some(&i) if shards[i] == expected => {}
                    Some(&i) => {
                        return Err(LensError::ShardIndex {
                            path: index.path.clone(),
                            message: format!(
                                "tensor '{name}' is listed in {shard_name} but was found in {}",
                                shards[i].display()
                            ),
                        })
                    }
                    None => {
                        return Err(LensError::ShardIndex {
                            path: index.path.clone(),
                            message: format!(
                                "tensor '{name}' is listed in {shard_name} but that shard does not contain it"
                            ),
                        })
                    }
                }
            }
        }

        Ok(Weights {
            tensors,
            taken: BTreeSet::new(),
            files: shards,
        })
    }

    /// Builds weights from tensors already in memory (for tests and synthetic models).
    pub fn from_tensors(tensors: impl IntoIterator<Item = (String, Tensor)>) -> Self {
        Weights {
            tensors: tensors.into_iter().collect(),
            taken: BTreeSet::new(),
            files: Vec::new(),
        }
    }

    /// The tensor `name`, sharing storage with the one held here.
    ///
    /// A missing name is a [`LensError::MissingTensor`] that names the checkpoint files and up
    /// to three similar names.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        self.tensors
            .get(name)
            .map(Tensor::shallow_clone)
            .ok_or_else(|| self.missing(name))
    }

    /// The tensor `name`, which must have shape `shape` ([`LensError::ShapeMismatch`] names
    /// the tensor and both shapes).
    pub fn get_shaped(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let tensor = self.get(name)?;
        check_shape(name, &tensor, shape)?;
        Ok(tensor)
    }

    /// Moves the tensor `name` out. A second `take` (or `get`) of the same name is an error
    /// saying it was taken.
    pub fn take(&mut self, name: &str) -> Result<Tensor> {
        match self.tensors.remove(name) {
            Some(tensor) => {
                self.taken.insert(name.to_string());
                Ok(tensor)
            }
            None => Err(self.missing(name)),
        }
    }

    /// [`Weights::take`] with the shape check of [`Weights::get_shaped`]; on a wrong shape the
    /// tensor stays in place.
    pub fn take_shaped(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        if let Some(tensor) = self.tensors.get(name) {
            check_shape(name, tensor, shape)?;
        }
        self.take(name)
    }

    /// Whether the tensor `name` is (still) here.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The names of the tensors still here, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The tensors still here, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The shape of the tensor `name`.
    pub fn shape(&self, name: &str) -> Result<Vec<i64>> {
        self.tensors
            .get(name)
            .map(Tensor::size)
            .ok_or_else(|| self.missing(name))
    }

    /// Number of tensors still here.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether no tensor is left.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The safetensors files the tensors came from (shards resolved), in load order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    fn missing(&self, name: &str) -> LensError {
        LensError::MissingTensor {
            name: name.to_string(),
            files: self.files.clone(),
            similar: if self.taken.contains(name) {
                Vec::new()
            } else {
                similar_names(name, self.tensors.keys().chain(self.taken.iter()), 3)
            },
            taken: self.taken.contains(name),
        }
    }
}

fn check_shape(name: &str, tensor: &Tensor, shape: &[i64]) -> Result<()> {
    let actual = tensor.size();
    if actual != shape {
        return Err(LensError::ShapeMismatch {
            name: name.to_string(),
            expected: shape.to_vec(),
            actual,
        });
    }
    Ok(())
}

fn is_float(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Half
            | Kind::Float
            | Kind::Double
            | Kind::BFloat16
            | Kind::Float8e5m2
            | Kind::Float8e4m3fn
    )
}

/// Writes `tensors` to a safetensors file at `path`, with `metadata` in its header (the
/// `__metadata__` map Python's `safe_open(...).metadata()` returns). Each tensor is copied to the
/// CPU and made contiguous; names must be unique.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let corrupt = |message: String| LensError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let mut stored = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let tensor = tensor.detach().to_device(Device::Cpu).contiguous();
        let dtype = dtype_of(tensor.kind()).ok_or_else(|| LensError::UnsupportedDtype {
            path: path.to_path_buf(),
            tensor: name.clone(),
            dtype: format!("{:?}", tensor.kind()),
        })?;
        let mut bytes = vec![0u8; tensor.numel() * tensor.kind().elt_size_in_bytes()];
        tensor.copy_data_u8(&mut bytes, tensor.numel());
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        stored.push((name.clone(), dtype, shape, bytes));
    }
    let views = stored
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| corrupt(format!("tensor '{name}': {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, Some(metadata), path)
        .map_err(|e| corrupt(format!("cannot write: {e}")))
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        _ => return None,
    })
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F8_E5M2 => Kind::Float8e5m2,
        Dtype::F8_E4M3 => Kind::Float8e4m3fn,
        _ => return None,
    })
}

/// One copy from the mapped bytes into a fresh CPU tensor, then the conversion asked for.
fn tensor_from_view(
    path: &Path,
    name: &str,
    view: &safetensors::tensor::TensorView<'_>,
    kind: Option<Kind>,
    device: Device,
) -> Result<Tensor> {
    let dtype = view.dtype();
    let src_kind = kind_of(dtype).ok_or_else(|| LensError::UnsupportedDtype {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        dtype: format!("{dtype:?}"),
    })?;
    let corrupt = |message: String| LensError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let shape = view
        .shape()
        .iter()
        .map(|&d| i64::try_from(d))
        .collect::<std::result::Result<Vec<i64>, _>>()
        .map_err(|_| {
            corrupt(format!(
                "tensor '{name}' has a dimension that overflows i64"
            ))
        })?;
    let data = view.data();
    let tensor = Tensor::f_empty(shape.as_slice(), (src_kind, Device::Cpu))
        .map_err(|e| LensError::torch(format!("allocating tensor '{name}' {shape:?}"), e))?;
    let n_bytes = tensor.numel() * src_kind.elt_size_in_bytes();
    if n_bytes != data.len() {
        return Err(corrupt(format!(
            "tensor '{name}' {shape:?} {dtype:?} needs {n_bytes} bytes but has {}",
            data.len()
        )));
    }
    if n_bytes > 0 {
        // SAFETY: `tensor` is a freshly allocated, contiguous CPU tensor of exactly `n_bytes`
        // bytes; `data` is `n_bytes` long (checked above); the regions cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), tensor.data_ptr().cast::<u8>(), n_bytes);
        }
    }
    let target = match kind {
        Some(k) if is_float(src_kind) => k,
        _ => src_kind,
    };
    if target == src_kind && device == Device::Cpu {
        return Ok(tensor);
    }
    tensor
        .f_to_device_(device, target, false, false)
        .map_err(|e| {
            LensError::torch(
                format!("converting tensor '{name}' to {target:?} on {device:?}"),
                e,
            )
        })
}

/// `model.safetensors.index.json`.
#[derive(Debug)]
pub(crate) struct ShardIndex {
    pub(crate) path: PathBuf,
    pub(crate) weight_map: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawIndex {
    weight_map: BTreeMap<String, String>,
}

impl ShardIndex {
    pub(crate) fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| LensError::io(path, e))?;
        let raw: RawIndex = serde_json::from_str(&text).map_err(|e| LensError::MalformedJson {
            path: Some(path.to_path_buf()),
            what: "shard index",
            message: e.to_string(),
        })?;
        if raw.weight_map.is_empty() {
            return Err(LensError::ShardIndex {
                path: path.to_path_buf(),
                message: "weight_map is empty".to_string(),
            });
        }
        for shard in raw.weight_map.values() {
            let p = Path::new(shard);
            let plain = p.components().count() == 1
                && matches!(p.components().next(), Some(std::path::Component::Normal(_)));
            if !plain {
                return Err(LensError::ShardIndex {
                    path: path.to_path_buf(),
                    message: format!("shard '{shard}' is not a plain file name"),
                });
            }
        }
        Ok(ShardIndex {
            path: path.to_path_buf(),
            weight_map: raw.weight_map,
        })
    }

    pub(crate) fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// The distinct shard file names, sorted.
    pub(crate) fn shard_names(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self.weight_map.values().collect();
        set.into_iter().cloned().collect()
    }

    /// The shard files, next to the index, sorted.
    pub(crate) fn shard_paths(&self) -> Vec<PathBuf> {
        let dir = self.dir();
        self.shard_names().iter().map(|s| dir.join(s)).collect()
    }
}

/// Up to `n` names from `candidates` that look most like `name`, best first.
///
/// A candidate that ends with `name` or with which `name` ends (a missing or extra prefix such
/// as `transformer.`) ranks first; the rest rank by edit distance, and only those within half
/// the length of `name` are offered.
pub(crate) fn similar_names<'a>(
    name: &str,
    candidates: impl Iterator<Item = &'a String>,
    n: usize,
) -> Vec<String> {
    let mut scored: Vec<(usize, &String)> = candidates
        .filter_map(|c| {
            if c.ends_with(name) || name.ends_with(c.as_str()) {
                return Some((0, c));
            }
            let d = edit_distance(name, c);
            (d <= name.len().max(4) / 2).then_some((d, c))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(n).map(|(_, c)| c.clone()).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a = a.as_bytes();
    let b = b.as_bytes();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, &ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitution.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn similar_names_prefers_prefix_differences_then_distance() {
        let names: Vec<String> = [
            "transformer.h.0.attn.c_attn.weight",
            "transformer.h.0.attn.c_attn.bias",
            "transformer.h.1.attn.c_attn.weight",
            "transformer.wte.weight",
            "lm_head.weight",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let got = similar_names("h.0.attn.c_attn.weight", names.iter(), 3);
        assert_eq!(got[0], "transformer.h.0.attn.c_attn.weight");
        let got = similar_names("transformer.h.0.attn.c_atn.weight", names.iter(), 3);
        assert_eq!(
            got,
            vec![
                "transformer.h.0.attn.c_attn.weight",
                "transformer.h.1.attn.c_attn.weight",
                "transformer.h.0.attn.c_attn.bias",
            ]
        );
        assert!(similar_names("completely_unrelated", names.iter(), 3).is_empty());
    }
}
