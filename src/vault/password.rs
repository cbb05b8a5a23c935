//! A password a person hands a command on stdin (`--password-stdin`), read without
//! leaving copies behind.

use std::io::BufRead;

use secrecy::SecretString;
use zeroize::Zeroizing;

/// The first line of `input`, without its line ending; other spaces are kept, as they
/// may be part of the password.
pub fn read_password_line(input: &mut impl BufRead) -> std::io::Result<SecretString> {
    // Sized up front so the buffer is not reallocated (leaving copies) while reading.
    let mut line = Zeroizing::new(String::with_capacity(1024));
    input.read_line(&mut line)?;
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(SecretString::from(trimmed.to_string()))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn a_password_line_loses_only_its_line_ending() {
        let read = |input: &str| read_password_line(&mut input.as_bytes()).unwrap();
        assert_eq!(read("p w\r\n").expose_secret(), "p w");
        assert_eq!(read("pw").expose_secret(), "pw");
        assert_eq!(read(" pw \n").expose_secret(), " pw ");
        assert_eq!(read("pw\nnext line\n").expose_secret(), "pw");
    }
}
