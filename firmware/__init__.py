# Node-board firmware tree. Deploy copies main.py, hal_board.py and mnnfw/ to each board;
# this file only lets the host package ship the tree as package data.
