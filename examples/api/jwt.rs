//! Where the example's JWT secret comes from: `JWT_SECRET`, or a development secret.

use std::path::PathBuf;

/// The issuer and audience the example's tokens carry (and the layer requires).
pub const ISSUER: &str = "reqscope-example";
pub const AUDIENCE: &str = "reqscope-api";

/// Where the development secret is kept, so that `mint_token` signs with the same one.
pub fn dev_secret_path() -> PathBuf {
    std::env::temp_dir().join("reqscope-dev-jwt-secret")
}

/// `JWT_SECRET` if set; otherwise the development secret, made on first use.
pub fn secret(create: bool) -> Result<Vec<u8>, String> {
    if let Ok(secret) = std::env::var("JWT_SECRET") {
        if secret.len() < 32 {
            return Err("JWT_SECRET must be at least 32 bytes".into());
        }
        return Ok(secret.into_bytes());
    }
    let path = dev_secret_path();
    if let Ok(secret) = std::fs::read(&path) {
        return Ok(secret);
    }
    if !create {
        return Err(format!("JWT_SECRET is not set and {} does not exist yet: start the server once", path.display()));
    }
    let mut secret = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut secret))
        .map_err(|e| format!("cannot make a development secret: {e}"))?;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, &hex).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(hex.into_bytes())
}
