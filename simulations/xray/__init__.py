"""Physically simulated radiographs of implant meshes (manufacturers\x27 CAD) with gVirtualXray."""
