"""Entry translations: HTTP requests, uploads, CloudEvents and bucket notifications in; answers out."""
