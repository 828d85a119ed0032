//! The MCP server driven by the official Python SDK (`mcp` from PyPI, pinned; installed into
//! `tools/.venv` by `bash tools/setup.sh`), over stdio and streamable HTTP: the script
//! `tools/tests/mcp_client.py` initialises, lists tools, remembers, recalls, forgets, makes
//! malformed calls, restarts the server and recalls again.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn the_python_sdk_client_uses_the_store_over_stdio_and_http() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash tools/setup.sh` (it installs the MCP Python SDK there)",
        python.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&python)
        .arg(root.join("tests/mcp_client.py"))
        .arg(env!("CARGO_BIN_EXE_magray-mem"))
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("2 passed, 0 failed"),
        "the Python client failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}
