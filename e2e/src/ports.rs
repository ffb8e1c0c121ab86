use std::net::TcpListener;

/// A port on 127.0.0.1 that nothing listens on right now. The kernel hands out ephemeral
/// ports round-robin, so the window in which another process takes it again is small.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
