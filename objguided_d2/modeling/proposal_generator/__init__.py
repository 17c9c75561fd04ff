"""Proposal generators (importing registers them in ``PROPOSAL_GENERATOR_REGISTRY``)."""

from .centernet import CenterNetProposalGenerator
from . import centernet_utils

__all__ = ["CenterNetProposalGenerator", "centernet_utils"]
