"""The peers' methods beside the SAE latent: their file formats, the persona and CAA vectors, the A/B metric and
the side-by-side method table."""
