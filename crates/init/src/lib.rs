//! The pod VM's first userspace step, as a library so the image builder shares its formats:
//! - [`gpt`]: GUID partition tables (written by the image builder, read by the init);
//! - [`cmdline`]: the kernel command line words that name the verity root;
//! - [`dm`]: the device-mapper ioctls that open a dm-verity device;
//! - [`modules`]: loading the kernel modules an image lists (the agent uses it too);
//! - [`power`]: ending the VM (the agent uses it too).

pub mod cmdline;
pub mod dm;
pub mod gpt;
pub mod modules;
pub mod power;
