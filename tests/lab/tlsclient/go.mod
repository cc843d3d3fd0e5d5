module kubepki.example/labclient

go 1.19
