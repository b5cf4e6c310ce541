"""`bench`: how fast psm_repro's paths are against plain Hugging Face and the machine's limit."""
