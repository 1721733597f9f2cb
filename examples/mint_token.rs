//! Mints a development token for the example API server.
//!
//! ```text
//! cargo run --example mint_token -- 1            # a token for user 1, valid for one hour
//! cargo run --example mint_token -- 2 admin      # user 2 with the role `admin`
//! cargo run --example mint_token -- 1 log-debug  # may raise its requests to DEBUG (x-log-level)
//! curl -H "Authorization: Bearer $(cargo run -q --example mint_token -- 1)" localhost:3000/users/me
//! ```
//!
//! Signs with `JWT_SECRET`, or with the development secret the server made when
//! `JWT_SECRET` was unset. Prints only the token.
#![forbid(unsafe_code)]

#[path = "api/jwt.rs"]
mod jwt;

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(user) = args.next() else {
        eprintln!("usage: mint_token <user id> [role ...]");
        return ExitCode::FAILURE;
    };
    let roles: Vec<String> = args.collect();
    let secret = match jwt::secret(false) {
        Ok(secret) => secret,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "sub": user,
        "iss": jwt::ISSUER,
        "aud": jwt::AUDIENCE,
        "iat": now,
        "exp": now + 3600,
        "org_id": "acme",
        "roles": roles,
    });
    match reqscope::auth::mint_hs256(&secret, &claims) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
