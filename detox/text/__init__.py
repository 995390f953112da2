"""Text decoding for Japanese mail: body charsets (:mod:`.charset`) and headers (:mod:`.headers`)."""
