"""The processor service: fetches one source image, compresses it to JPEG and stores it."""
