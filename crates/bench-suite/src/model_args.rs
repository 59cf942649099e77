//! The options every `tl-bench` subcommand takes to pick a model: which one, on which device, in
//! which dtype — parsed the same way everywhere and checked before anything is loaded.

use std::str::FromStr;

use clap::Args;
use lens_core::model::{check_device, ModelResult};
use tch::{Device, Kind};

/// `--model`, `--device`, `--dtype`.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Local HF directory, embedded model name, or HF id.
    #[arg(long, default_value = lens_core::DEFAULT_MODEL)]
    pub model: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub dtype: Kind,
}

impl ModelArgs {
    /// Whether the device exists on this machine (the CLI exits with 2 when it does not).
    pub fn check_device(&self) -> ModelResult<()> {
        check_device(self.device)
    }
}

/// Parses `cpu`, `cuda`, `cuda:N`.
pub fn parse_device(text: &str) -> Result<Device, String> {
    match text {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| usize::from_str(n).ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("unknown device '{other}': use cpu, cuda or cuda:N")),
    }
}

/// Parses `f32`, `f16`, `bf16`.
pub fn parse_dtype(text: &str) -> Result<Kind, String> {
    match text {
        "f32" | "float32" => Ok(Kind::Float),
        "f16" | "float16" => Ok(Kind::Half),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        other => Err(format!("unknown dtype '{other}': use f32, f16 or bf16")),
    }
}

/// The name `--dtype` takes for a kind (`f32`, `f16`, `bf16`), for reports and metadata.
pub fn dtype_name(kind: Kind) -> String {
    match kind {
        Kind::Float => "f32".to_owned(),
        Kind::Half => "f16".to_owned(),
        Kind::BFloat16 => "bf16".to_owned(),
        other => format!("{other:?}"),
    }
}

/// The name `--device` takes for a device (`cpu`, `cuda:N`).
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".to_owned(),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for text in ["cpu", "cuda:0", "cuda:3"] {
            assert_eq!(device_name(parse_device(text).unwrap()), text);
        }
        assert_eq!(parse_device("cuda").unwrap(), Device::Cuda(0));
        assert!(parse_device("tpu").unwrap_err().contains("tpu"));
        for text in ["f32", "f16", "bf16"] {
            assert_eq!(dtype_name(parse_dtype(text).unwrap()), text);
        }
        assert!(parse_dtype("f64").is_err());
    }
}
