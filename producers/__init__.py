"""The producer API: ``ImageProducer`` and the lazy image sources it reads from."""

from producers.producer import ImageProducer, ImageRefused, ProducerStats

__all__ = ["ImageProducer", "ImageRefused", "ProducerStats"]
