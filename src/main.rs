//! The `rxvmm` binary: parse, pick an engine, run the VM, exit with its code.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rxvmm::cli::{default_guest_dir, Cli, Command, VmArgs, DEFAULT_CMDLINE};
use rxvmm::console::Console;
use rxvmm::exit_code;
use rxvmm::loader::KernelConfig;
use rxvmm::vmm::{run_vm, VirtioSpec, VmSpec};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Bench(args)) => rxvmm::bench::run(&args).map(|()| exit_code::POWEROFF).map_err(Into::into),
        Some(Command::Guest { name, output, list }) => write_guest(name, output, list).map(|()| exit_code::POWEROFF),
        None => run(&cli.vm),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("rxvmm: error: {e:#}");
            ExitCode::from(exit_code::VMM_ERROR)
        }
    }
}

fn run(args: &VmArgs) -> anyhow::Result<u8> {
    let spec = vm_spec(args)?;
    let accel = rxvmm::accel_select::select(args.accel)?;
    let reason = run_vm(&spec, accel.as_ref(), Console::stdio())?;
    if accel.kind() == accel::AccelKind::Tcg {
        log::debug!(target: "rxvmm::tcg", "statistics: {}", accel::tcg::stats());
    }
    let code = exit_code::for_reason(&reason);
    match &reason {
        devices::ExitReason::Poweroff | devices::ExitReason::UserQuit => {}
        devices::ExitReason::Reset => eprintln!("rxvmm: guest reset the machine (exit code {code})"),
        devices::ExitReason::GuestCrash(why) => eprintln!("rxvmm: guest crashed: {why}"),
        devices::ExitReason::VmmError(why) => eprintln!("rxvmm: error: {why}"),
    }
    Ok(code)
}

fn vm_spec(args: &VmArgs) -> anyhow::Result<VmSpec> {
    let guest = default_guest_dir();
    let (kernel, initrd) = match &args.kernel {
        Some(k) => (k.clone(), args.initrd.clone()),
        None => (guest.join("bzImage"), args.initrd.clone().or_else(|| Some(guest.join("initrd.img")))),
    };
    let cmdline = args.cmdline.clone().unwrap_or_else(|| DEFAULT_CMDLINE.to_string());
    let virtio = VirtioSpec::parse(&args.disk, args.rng, &args.net)?;
    Ok(VmSpec { kernel: KernelConfig { kernel, initrd, cmdline }, mem_mib: args.mem, vcpus: args.cpus, virtio })
}

fn write_guest(name: Option<String>, output: Option<std::path::PathBuf>, list: bool) -> anyhow::Result<()> {
    if list || name.is_none() {
        for n in rxvmm::guests::names() {
            println!("{n}");
        }
        return Ok(());
    }
    let name = name.unwrap_or_default();
    let image = rxvmm::guests::build(&name)?;
    let path = output.unwrap_or_else(|| format!("{name}.elf").into());
    std::fs::write(&path, image).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
