"""Media helpers shared by processors and engines: every ffmpeg/ffprobe run (``ffmpeg_io``),
photo and video-frame decoding (``imaging``) and file probing for meta (``probe``)."""
