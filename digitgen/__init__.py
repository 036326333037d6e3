"""digitgen: digit generation with a VAE and an autoencoder, run as a Prefect pipeline."""
