//! Safetensors loading.

use std::path::PathBuf;

use lens_core::{LensError, Weights};
use rstest::rstest;
use tch::{Device, Kind, Tensor};

use crate::common::{
    assert_message, assert_tensor_eq, tiny_gpt2_dir, write_model_dir, write_safetensors,
};

fn sample() -> (Tensor, Tensor) {
    // Values exactly representable in f16 and bf16.
    let a = Tensor::from_slice(&[0.5f32, -1.25, 3.0, 0.0, 1024.0, -0.0078125]).reshape([2, 3]);
    let ids = Tensor::from_slice(&[7i64, -3, 1 << 40]);
    (a, ids)
}

#[rstest]
#[case::f32(Kind::Float)]
#[case::f16(Kind::Half)]
#[case::bf16(Kind::BFloat16)]
#[case::f64(Kind::Double)]
fn loads_each_float_dtype_as_stored(#[case] stored: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let (a, ids) = sample();
    let a_stored = a.to_kind(stored);
    write_safetensors(&path, &[("a", &a_stored), ("ids", &ids)]);

    let w = Weights::load(&[&path], None, Device::Cpu).unwrap();
    assert_eq!(w.len(), 2);
    assert_eq!(w.names().collect::<Vec<_>>(), vec!["a", "ids"]);
    assert_tensor_eq(&w.get("a").unwrap(), &a_stored);
    assert_tensor_eq(&w.get("ids").unwrap(), &ids);
    assert_eq!(w.files(), std::slice::from_ref(&path));

    // Converted to f32: the values survive exactly; integer tensors keep their kind.
    let w = Weights::load(&[&path], Some(Kind::Float), Device::Cpu).unwrap();
    assert_tensor_eq(&w.get("a").unwrap(), &a);
    assert_tensor_eq(&w.get("ids").unwrap(), &ids);

    // And to half.
    let w = Weights::load(&[&path], Some(Kind::Half), Device::Cpu).unwrap();
    assert_tensor_eq(&w.get("a").unwrap(), &a.to_kind(Kind::Half));
    assert_eq!(w.get("ids").unwrap().kind(), Kind::Int64);
}

#[test]
fn integer_and_bool_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let i32s = Tensor::from_slice(&[1i32, -2, 3]);
    let bools = Tensor::from_slice(&[true, false, true]);
    let bytes = Tensor::from_slice(&[0u8, 255]);
    let empty = Tensor::zeros([0, 4], (Kind::Float, Device::Cpu));
    write_safetensors(
        &path,
        &[
            ("i", &i32s),
            ("b", &bools),
            ("u", &bytes),
            ("empty", &empty),
        ],
    );
    let w = Weights::load(&[&path], Some(Kind::Float), Device::Cpu).unwrap();
    assert_tensor_eq(&w.get("i").unwrap(), &i32s);
    assert_tensor_eq(&w.get("b").unwrap(), &bools);
    assert_tensor_eq(&w.get("u").unwrap(), &bytes);
    assert_eq!(w.shape("empty").unwrap(), vec![0, 4]);
}

#[test]
fn non_float_kind_is_rejected() {
    let path = PathBuf::from("unused.safetensors");
    let err = Weights::load(&[&path], Some(Kind::Int64), Device::Cpu).unwrap_err();
    assert!(
        matches!(err, LensError::NonFloatKind(Kind::Int64)),
        "{err:?}"
    );
    let err = Weights::load::<PathBuf>(&[], None, Device::Cpu).unwrap_err();
    assert!(matches!(err, LensError::EmptyInput(_)), "{err:?}");
}

#[test]
fn sharded_checkpoint_through_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = write_model_dir(dir.path(), true, None);
    let index = dir.path().join("model.safetensors.index.json");
    let w = Weights::load(&[&index], None, Device::Cpu).unwrap();
    assert_eq!(w.len(), tensors.len());
    for (name, t) in &tensors {
        assert_tensor_eq(&w.get(name).unwrap(), t);
    }
    assert_eq!(
        w.files(),
        &[
            dir.path().join("model-00001-of-00002.safetensors"),
            dir.path().join("model-00002-of-00002.safetensors")
        ]
    );
    // The shards given directly load the same tensors.
    let w2 = Weights::load(w.files(), None, Device::Cpu).unwrap();
    assert_eq!(
        w2.names().collect::<Vec<_>>(),
        w.names().collect::<Vec<_>>()
    );
}

#[test]
fn index_inconsistent_with_its_shards() {
    let dir = tempfile::tempdir().unwrap();
    write_model_dir(dir.path(), true, None);
    let index = dir.path().join("model.safetensors.index.json");
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();

    // A tensor listed in the wrong shard.
    value["weight_map"]["transformer.wte.weight"] = "model-00002-of-00002.safetensors".into();
    std::fs::write(&index, value.to_string()).unwrap();
    let err = Weights::load(&[&index], None, Device::Cpu).unwrap_err();
    assert!(matches!(err, LensError::ShardIndex { .. }), "{err:?}");
    assert_message(
        &err,
        &[
            "transformer.wte.weight",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
        ],
    );

    // A tensor that no shard has.
    value["weight_map"]["transformer.wte.weight"] = "model-00001-of-00002.safetensors".into();
    value["weight_map"]["lm_head.weight"] = "model-00001-of-00002.safetensors".into();
    std::fs::write(&index, value.to_string()).unwrap();
    let err = Weights::load(&[&index], None, Device::Cpu).unwrap_err();
    assert_message(&err, &["lm_head.weight", "does not contain it"]);

    // A shard that does not exist.
    value["weight_map"]["lm_head.weight"] = "model-00003-of-00002.safetensors".into();
    std::fs::write(&index, value.to_string()).unwrap();
    let err = Weights::load(&[&index], None, Device::Cpu).unwrap_err();
    assert!(matches!(err, LensError::Io { .. }), "{err:?}");
    assert_message(&err, &["model-00003-of-00002.safetensors"]);

    // A shard name that escapes the directory.
    value["weight_map"]["lm_head.weight"] = "../elsewhere.safetensors".into();
    std::fs::write(&index, value.to_string()).unwrap();
    let err = Weights::load(&[&index], None, Device::Cpu).unwrap_err();
    assert_message(&err, &["not a plain file name"]);

    // Not an index at all.
    std::fs::write(&index, r#"{"metadata": {}}"#).unwrap();
    let err = Weights::load(&[&index], None, Device::Cpu).unwrap_err();
    assert!(matches!(err, LensError::MalformedJson { .. }), "{err:?}");
    assert_message(&err, &["shard index", "weight_map"]);
}

#[test]
fn duplicate_names_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = sample();
    let one = dir.path().join("one.safetensors");
    let two = dir.path().join("two.safetensors");
    write_safetensors(&one, &[("a", &a)]);
    write_safetensors(&two, &[("a", &a)]);
    let err = Weights::load(&[&one, &two], None, Device::Cpu).unwrap_err();
    assert!(matches!(err, LensError::DuplicateTensor { .. }), "{err:?}");
    assert_message(&err, &["'a'", "one.safetensors", "two.safetensors"]);
}

#[test]
fn truncated_and_corrupt_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let (a, ids) = sample();
    write_safetensors(&path, &[("a", &a), ("ids", &ids)]);
    let full = std::fs::read(&path).unwrap();

    for (what, bytes) in [
        ("truncated data", full[..full.len() - 3].to_vec()),
        ("truncated header", full[..20].to_vec()),
        ("empty", Vec::new()),
        (
            "not safetensors",
            b"this is not a safetensors file at all".to_vec(),
        ),
        ("extra bytes", [full.clone(), vec![0u8; 8]].concat()),
    ] {
        std::fs::write(&path, &bytes).unwrap();
        let err = Weights::load(&[&path], None, Device::Cpu).unwrap_err();
        assert!(
            matches!(err, LensError::Safetensors { .. }),
            "{what}: {err:?}"
        );
        assert_message(&err, &[&path.display().to_string()]);
    }

    let missing = dir.path().join("absent.safetensors");
    let err = Weights::load(&[&missing], None, Device::Cpu).unwrap_err();
    assert!(matches!(err, LensError::Io { .. }), "{err:?}");
    assert_message(&err, &["absent.safetensors"]);
}

#[test]
fn missing_tensor_names_files_and_similar_names() {
    let dir = tempfile::tempdir().unwrap();
    write_model_dir(dir.path(), false, None);
    let path = dir.path().join("model.safetensors");
    let w = Weights::load(&[&path], None, Device::Cpu).unwrap();

    let err = w.get("transformer.h.0.attn.c_atn.weight").unwrap_err();
    assert!(matches!(err, LensError::MissingTensor { .. }), "{err:?}");
    assert_message(
        &err,
        &[
            "'transformer.h.0.attn.c_atn.weight'",
            &path.display().to_string(),
            "similar names: transformer.h.0.attn.c_attn.weight, transformer.h.0.attn.c_attn.bias",
        ],
    );
    match &err {
        LensError::MissingTensor { similar, .. } => assert!(similar.len() <= 3),
        _ => unreachable!(),
    }

    // A missing prefix ranks first.
    let err = w.get("h.0.attn.c_attn.bias").unwrap_err();
    assert_message(&err, &["similar names: transformer.h.0.attn.c_attn.bias"]);

    // Nothing alike: no suggestions.
    let err = w.get("completely.different").unwrap_err();
    assert!(!err.to_string().contains("similar"), "{err}");
}

#[test]
fn wrong_shape_names_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    write_model_dir(dir.path(), false, None);
    let mut w = Weights::load(&[dir.path().join("model.safetensors")], None, Device::Cpu).unwrap();
    let t = w.get_shaped("transformer.wte.weight", &[12, 8]).unwrap();
    assert_eq!(t.size(), vec![12, 8]);
    let err = w
        .get_shaped("transformer.wte.weight", &[8, 12])
        .unwrap_err();
    assert!(matches!(err, LensError::ShapeMismatch { .. }), "{err:?}");
    assert_message(
        &err,
        &["'transformer.wte.weight'", "[12, 8]", "expected [8, 12]"],
    );

    // take_shaped with a wrong shape leaves the tensor in place.
    assert!(w.take_shaped("transformer.wte.weight", &[1]).is_err());
    assert!(w.contains("transformer.wte.weight"));
}

#[test]
fn take_moves_tensors_out() {
    let tensors = crate::common::tiny_tensors();
    let expected = tensors[0].1.shallow_clone();
    let mut w = Weights::from_tensors(tensors);
    let n = w.len();
    let got = w.take_shaped("transformer.wte.weight", &[12, 8]).unwrap();
    assert_tensor_eq(&got, &expected);
    assert!(!w.contains("transformer.wte.weight"));
    assert_eq!(w.len(), n - 1);
    let err = w.take("transformer.wte.weight").unwrap_err();
    assert_message(&err, &["'transformer.wte.weight' was already taken"]);
    let err = w.get("transformer.wte.weight").unwrap_err();
    assert!(
        matches!(err, LensError::MissingTensor { taken: true, .. }),
        "{err:?}"
    );
    // get shares storage with what stays behind.
    let a = w.get("transformer.ln_f.weight").unwrap();
    let b = w.get("transformer.ln_f.weight").unwrap();
    assert_eq!(a.data_ptr(), b.data_ptr());
}

#[test]
fn embedded_checkpoint() {
    let path = tiny_gpt2_dir().join("model.safetensors");
    let w = Weights::load(&[&path], None, Device::Cpu).unwrap();
    // 12 tensors per block, wte, wpe, ln_f.{weight,bias}; lm_head is tied and absent.
    assert_eq!(w.len(), 4 * 12 + 4);
    assert_eq!(w.shape("transformer.wte.weight").unwrap(), vec![50257, 64]);
    assert_eq!(w.shape("transformer.wpe.weight").unwrap(), vec![256, 64]);
    assert_eq!(
        w.shape("transformer.h.3.attn.c_attn.weight").unwrap(),
        vec![64, 192]
    );
    assert!(!w.contains("lm_head.weight"));
    for (_, t) in w.iter() {
        assert_eq!(t.kind(), Kind::Float);
        assert_eq!(t.device(), Device::Cpu);
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn loads_onto_cuda() {
    crate::common::require_cuda();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let (a, ids) = sample();
    let a16 = a.to_kind(Kind::BFloat16);
    write_safetensors(&path, &[("a", &a16), ("ids", &ids)]);
    let w = Weights::load(&[&path], Some(Kind::Float), Device::Cuda(0)).unwrap();
    let got = w.get("a").unwrap();
    assert_eq!(got.device(), Device::Cuda(0));
    assert_tensor_eq(&got.to_device(Device::Cpu), &a);
    assert_tensor_eq(&w.get("ids").unwrap().to_device(Device::Cpu), &ids);
}
