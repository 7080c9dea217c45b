"""Infrastructure the layers above share: logging, CPU sizing, the SSRF guard, HTTP sessions."""
