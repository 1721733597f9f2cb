//! Where the example's JWT secret comes from: `JWT_SECRET`, or a development secret.

use std::path::PathBuf;

/// The issuer and audience the example's tokens carry (and the layer requires).
pub const ISSUER: &str = "reqscope-example";
pub const AUDIENCE: &str = "reqscope-api";

/// Where the development secret is kept, so that `mint_token` signs with the same one.
pub fn dev_secret_path() -> PathBuf {
    std::env::temp_dir().join("reqscope-dev-jwt-secret")
}

/// `JWT_SECRET` if set. Otherwise the development secret: made anew when the server starts
/// (`create`), read back by `mint_token`. The file is readable by its owner only.
pub fn secret(create: bool) -> Result<Vec<u8>, String> {
    if let Ok(secret) = std::env::var("JWT_SECRET") {
        if secret.len() < 32 {
            return Err("JWT_SECRET must be at least 32 bytes".into());
        }
        return Ok(secret.into_bytes());
    }
    let path = dev_secret_path();
    if !create {
        let secret = std::fs::read(&path).map_err(|_| {
            format!("JWT_SECRET is not set and {} does not exist: start the server first", path.display())
        })?;
        if secret.len() < 32 {
            return Err(format!("{} is not a development secret made by the server", path.display()));
        }
        return Ok(secret);
    }
    use std::io::{Read, Write};
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(|e| format!("cannot make a development secret: {e}"))?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    // A new file each start, created by us: never one another user planted.
    let _ = std::fs::remove_file(&path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(&path)
        .and_then(|mut file| file.write_all(hex.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(hex.into_bytes())
}
