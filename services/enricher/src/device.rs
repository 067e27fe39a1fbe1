//! Picks where inference runs. `auto` takes a hardware GPU adapter through wgpu when one
//! exists and otherwise burn-flex on the CPU; `gpu` insists on wgpu (any adapter, software
//! ones such as Mesa's lavapipe included, which is how CI exercises the wgpu path); `cpu` is
//! burn-flex. A software adapter never counts as a GPU.

use std::fmt;

use burn::prelude::*;
use burn::tensor::wgpu::wgpu::DeviceType;

use crate::error::ModelError;

/// `--device` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    Auto,
    Gpu,
    Cpu,
}

/// What was chosen, for logs, metrics and the enriched records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adapter {
    /// burn-flex on the host CPU.
    Cpu,
    /// A wgpu adapter.
    Wgpu {
        name: String,
        device_type: String,
        backend: String,
        driver: String,
        /// True for a real GPU; false for software rasterisers (lavapipe, llvmpipe).
        hardware: bool,
    },
}

impl Adapter {
    /// True only while a hardware GPU adapter runs the model.
    pub fn is_hardware_gpu(&self) -> bool {
        matches!(self, Adapter::Wgpu { hardware: true, .. })
    }

    /// Short label for records and metrics: `cpu`, `wgpu-gpu` or `wgpu-software`.
    pub fn label(&self) -> &'static str {
        match self {
            Adapter::Cpu => "cpu",
            Adapter::Wgpu { hardware: true, .. } => "wgpu-gpu",
            Adapter::Wgpu {
                hardware: false, ..
            } => "wgpu-software",
        }
    }
}

impl fmt::Display for Adapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Adapter::Cpu => write!(f, "cpu (burn-flex)"),
            Adapter::Wgpu {
                name,
                device_type,
                backend,
                driver,
                hardware,
            } => write!(
                f,
                "wgpu adapter {name:?} type {device_type} backend {backend} driver {driver:?} ({})",
                if *hardware { "hardware" } else { "software" }
            ),
        }
    }
}

/// Opens the device for `choice`. `auto` never fails: without a usable hardware adapter it
/// falls back to the CPU and says why in the log.
pub fn open(choice: DeviceChoice) -> Result<(Device, Adapter), ModelError> {
    match choice {
        DeviceChoice::Cpu => Ok((Device::flex(), Adapter::Cpu)),
        DeviceChoice::Gpu => open_wgpu(),
        DeviceChoice::Auto => match open_wgpu() {
            Ok((device, adapter)) if adapter.is_hardware_gpu() => Ok((device, adapter)),
            Ok((_, adapter)) => {
                tracing::info!(%adapter, "no hardware GPU adapter; using the CPU backend");
                Ok((Device::flex(), Adapter::Cpu))
            }
            Err(error) => {
                tracing::info!(%error, "no wgpu adapter; using the CPU backend");
                Ok((Device::flex(), Adapter::Cpu))
            }
        },
    }
}

fn open_wgpu() -> Result<(Device, Adapter), ModelError> {
    let (device, setup) = Device::wgpu_options()
        .init_with_setup()
        .map_err(|e| ModelError::Device(format!("wgpu: {e}")))?;
    let info = setup.adapter.get_info();
    let adapter = Adapter::Wgpu {
        name: info.name.clone(),
        device_type: format!("{:?}", info.device_type),
        backend: format!("{:?}", info.backend),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_owned(),
        hardware: !matches!(info.device_type, DeviceType::Cpu),
    };
    Ok((device, adapter))
}
