"""A stand-in for the internet, on 127.0.0.1: a TF Hub model server, the label map and photos.

The machine that builds and tests this project cannot reach tfhub.dev, gstatic.com or the photo
hosts. This package generates what they serve, in the same formats, so the real loading code
(``hub.load`` over HTTP, the CSV parser, the photo fetcher) runs unchanged in tests and benchmarks.
"""
