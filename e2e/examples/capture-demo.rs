//! A live demonstration of capture on a throwaway pod: creates a pod and a peer network
//! namespace joined by a veth pair (no route anywhere else), applies Istio's default sidecar
//! capture in the pod with the real `capture-init`, runs a stand-in proxy on 15001/15006 as
//! uid 1337, sends a few connections, prints where each one landed and what the proxy learned
//! as its original destination, then removes everything it created.
//!
//! Usage: `capture-demo [PATH-TO-capture-init]` (default: the `capture-init` cargo built beside
//! this example, in the directory above `examples/`). Needs root. `scripts/demo` builds both and
//! runs it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use capture_e2e::{
    APP_UID, Family, INBOUND_PORT, Listener, OUTBOUND_PORT, PROXY_UID, SIDECAR_ARGS, Topology, connect_as,
    connect_as_from, passthrough,
};

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("capture-demo: needs root (network namespaces and iptables)");
        return ExitCode::from(1);
    }
    // capture-demo [CAPTURE-INIT [FLAGS…]]: FLAGS (say `--native-nftables`) choose the backend.
    let flags: Vec<String> = std::env::args().skip(2).collect();
    let capture_init = std::env::args_os().nth(1).map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("own path");
        // target/<profile>/examples/capture-demo → target/<profile>/capture-init
        let examples = exe.parent().expect("a directory holds the example");
        examples.with_file_name("capture-init")
    });
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    match demo(&capture_init, &flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("capture-demo: {e}");
            ExitCode::from(1)
        }
    }
}

fn capture_init(bin: &PathBuf, topo: &Topology, extra: &[&str]) -> Result<(), String> {
    let netns = topo.pod.path().display().to_string();
    let mut args: Vec<&str> = SIDECAR_ARGS.to_vec();
    args.extend(["--dual-stack", "--network-namespace", &netns]);
    args.extend(extra);
    println!(
        "$ capture-init {}",
        args.iter().map(|a| shell_word(a)).collect::<Vec<_>>().join(" ")
    );
    let out = Command::new(bin)
        .args(&args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        println!("  {line}");
    }
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("capture-init exited with {}", out.status))
    }
}

fn shell_word(word: &str) -> String {
    if word.is_empty() || word.contains(['*', ' ']) {
        format!("'{word}'")
    } else {
        word.to_owned()
    }
}

fn demo(bin: &PathBuf, flags: &[&str]) -> Result<(), String> {
    // Dropping the topology removes both namespaces (and with them the veth pair and every
    // rule), also on an early return.
    let topo = Topology::new();
    let (pod4, peer4) = (topo.pod_ip(Family::V4), topo.peer_ip(Family::V4));
    let (pod6, peer6) = (topo.pod_ip(Family::V6), topo.peer_ip(Family::V6));
    println!("pod  netns {}: {pod4}, {pod6}", topo.pod.name());
    println!("peer netns {}: {peer4}, {peer6}", topo.peer.name());
    println!();
    capture_init(bin, &topo, flags)?;
    println!();

    let any = |family: Family, port| SocketAddr::new(family.unspecified(), port);
    // The stand-in sidecar: listeners owned by the proxy's uid, reporting original destinations.
    let outbound = Listener::spawn_proxy(&topo.pod, any(Family::V6, OUTBOUND_PORT), "proxy:15001");
    let inbound = Listener::spawn_proxy(&topo.pod, any(Family::V6, INBOUND_PORT), "proxy:15006");
    let peer_app = Listener::spawn(&topo.peer, any(Family::V6, 80), "peer app :80");
    let pod_app = Listener::spawn(&topo.pod, any(Family::V6, 8080), "pod app :8080");
    let pod_status = Listener::spawn(&topo.pod, any(Family::V6, 15021), "pod app :15021");
    let listeners = [&outbound, &inbound, &peer_app, &pod_app, &pod_status];

    type Connect<'a> = Box<dyn Fn() -> std::io::Result<(String, SocketAddr)> + 'a>;
    let cases: Vec<(String, Connect)> = vec![
        (
            format!("app   (uid {APP_UID}) in pod  -> {peer4}:80"),
            Box::new(|| connect_as(&topo.pod, APP_UID, APP_UID, SocketAddr::new(peer4, 80))),
        ),
        (
            format!("app   (uid {APP_UID}) in pod  -> [{peer6}]:80"),
            Box::new(|| connect_as(&topo.pod, APP_UID, APP_UID, SocketAddr::new(peer6, 80))),
        ),
        (
            format!("proxy (uid {PROXY_UID}) in pod  -> {peer4}:80"),
            Box::new(|| connect_as(&topo.pod, PROXY_UID, PROXY_UID, SocketAddr::new(peer4, 80))),
        ),
        (
            format!("client in peer        -> {pod4}:8080"),
            Box::new(|| connect_as(&topo.peer, APP_UID, APP_UID, SocketAddr::new(pod4, 8080))),
        ),
        (
            format!("client in peer        -> {pod4}:15021 (excluded)"),
            Box::new(|| connect_as(&topo.peer, APP_UID, APP_UID, SocketAddr::new(pod4, 15021))),
        ),
        (
            format!("proxy from 127.0.0.6  -> {pod4}:8080 (passthrough)"),
            Box::new(|| {
                connect_as_from(
                    &topo.pod,
                    PROXY_UID,
                    PROXY_UID,
                    passthrough(Family::V4),
                    SocketAddr::new(pod4, 8080),
                )
            }),
        ),
    ];
    for (what, connect) in &cases {
        let line = match connect() {
            Ok((reply, _)) => {
                let seen = listeners.iter().flat_map(|l| l.take_accepted()).next();
                match seen {
                    Some(seen) => match seen.original_dst {
                        Ok(orig)
                            if orig == SocketAddr::new(seen.local.ip().to_canonical(), seen.local.port()) =>
                        {
                            format!("reached {reply} directly")
                        }
                        Ok(orig) => format!("captured: {reply}, original destination {orig}"),
                        Err(e) => format!("reached {reply}, original destination unknown: {e}"),
                    },
                    None => format!("reached {reply}"),
                }
            }
            Err(e) => format!("failed: {e}"),
        };
        println!("{what:<52} {line}");
    }
    println!();
    drop(cases);
    let cleanup: Vec<&str> = flags.iter().copied().chain(["--cleanup-only"]).collect();
    capture_init(bin, &topo, &cleanup)?;
    drop((outbound, inbound, peer_app, pod_app, pod_status));
    drop(topo);
    println!("removed both network namespaces");
    Ok(())
}
