# Board entry point: read board.cfg (JSON) from the current directory, build the HAL it names,
# and serve the protocol until a REPL command. Without board.cfg the board stays at the REPL.
#   board.cfg: {"hal": "hal_board", "hal_args": {...}, "address": 3}
import json


def main():
    try:
        with open("board.cfg") as f:
            cfg = json.load(f)
    except OSError:
        print("mnn: no board.cfg: staying at the REPL")
        return
    except ValueError as e:
        print("mnn: board.cfg is not valid JSON (%s): staying at the REPL" % e)
        return
    from mnnfw.loop import run
    from mnnfw.server import Server

    mod = __import__(cfg.get("hal", "hal_board"))
    hal = mod.Hal(**cfg.get("hal_args", {}))
    server = Server(hal, address=cfg.get("address", 0))
    run(hal, server)
    print("mnn: protocol loop left: REPL")


if __name__ == "__main__":
    main()
